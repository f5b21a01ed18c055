package doctor

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/moby/sys/mountinfo"
)

// The kubelet refuses to start without these v1 controllers
// (validateSystemRequirements in pkg/kubelet/cm); pids carries the pod
// PID limit evelet sets.
var kubeletV1Controllers = []string{"cpu", "cpuacct", "cpuset", "memory", "pids"}

// On cgroup v2 the same needs, named as v2 names them.
var kubeletV2Controllers = []string{"cpu", "cpuset", "memory", "pids"}

// VM pods put QEMU into the pod's cgroup in the v1 cpu, cpuacct and
// memory hierarchies and refuse the pod without them, so on cgroup v2
// (cri/vm checkConfinement); the kubelet needs those on v1 too.

// Cgroups says which cgroup version the host mounts, with which
// controllers, and whether that is enough for the kubelet and VM pods.
func Cgroups(cfg Config) Result {
	cfg.defaults()
	r := Result{Check: "cgroups"}
	f, err := os.Open(cfg.MountInfo)
	if err != nil {
		return fail(r, fmt.Sprintf("cannot read the mount table: %v", err), "run doctor on the device, as the agent runs (root, host mount namespace)")
	}
	defer f.Close()
	mounts, err := mountinfo.GetMountsFromReader(f, nil)
	if err != nil {
		return fail(r, fmt.Sprintf("cannot parse %s: %v", cfg.MountInfo, err), "run doctor on the device, as the agent runs (root, host mount namespace)")
	}
	v1 := map[string]bool{}
	var v2 []string
	v2Mounted := false
	var hierarchies []string // mount points the kubelet's cgroup root must be in
	var v2Mount string
	for _, m := range mounts {
		switch m.FSType {
		case "cgroup":
			for _, o := range strings.Split(m.VFSOptions, ",") {
				v1[o] = true
				// The kubelet validates its root in the hierarchies of
				// the controllers it uses (not name=systemd, ...).
				if slices.Contains(kubeletV1Controllers, o) && !slices.Contains(hierarchies, m.Mountpoint) {
					hierarchies = append(hierarchies, m.Mountpoint)
				}
			}
		case "cgroup2":
			v2Mounted = true
			v2Mount = m.Mountpoint
			if b, err := os.ReadFile(filepath.Join(m.Mountpoint, "cgroup.controllers")); err == nil {
				v2 = append(v2, strings.Fields(string(b))...)
			}
		}
	}
	if len(v1) == 0 && v2Mounted {
		// Pure v2; on a hybrid host the kubelet uses the v1 hierarchies.
		hierarchies = append(hierarchies, v2Mount)
	}
	if len(hierarchies) > 0 {
		if f := checkCgroupRoot(cfg, hierarchies); f != nil {
			return fail(r, f.Found, f.Fix)
		}
		if cfg.VMPods && cfg.CgroupDriver == "systemd" {
			return fail(r, "the kubelet uses the systemd cgroup driver: VM pods are refused (QEMU is confined with cgroupfs paths only)",
				"use --cgroup-driver=cgroupfs (EVE's), or run the agent with --no-vm-pods")
		}
	}
	switch {
	case len(v1) > 0:
		var have []string
		for _, c := range append(slices.Clone(kubeletV1Controllers), "blkio", "devices", "freezer", "hugetlb") {
			if v1[c] {
				have = append(have, c)
			}
		}
		r.Found = "cgroup v1, controllers " + strings.Join(have, ",")
		if miss := missing(v1, kubeletV1Controllers); len(miss) > 0 {
			return fail(r, r.Found+"; missing "+strings.Join(miss, ",")+" (the kubelet refuses to start)",
				"mount the cgroup v1 hierarchies for "+strings.Join(miss, ",")+" (EVE's kernel and init do; a custom kernel needs CONFIG_CGROUP_* for them)")
		}
		r.Status = OK
		return r
	case v2Mounted:
		set := map[string]bool{}
		for _, c := range v2 {
			set[c] = true
		}
		r.Found = "cgroup v2, controllers " + strings.Join(v2, ",")
		if miss := missing(set, kubeletV2Controllers); len(miss) > 0 {
			return fail(r, r.Found+"; missing "+strings.Join(miss, ",")+" (the kubelet refuses to start)",
				"enable "+strings.Join(miss, ",")+" in the root's cgroup.subtree_control (or boot with them compiled in)")
		}
		if cfg.VMPods {
			return fail(r, r.Found+"; VM pods are refused on cgroup v2 (QEMU would run outside the pod's cgroup)",
				"boot the device with cgroup v1 hierarchies (cpu,cpuacct,memory), or run the agent with --no-vm-pods")
		}
		r.Status = OK
		return r
	}
	return fail(r, "no cgroup filesystem mounted", "mount cgroup v1 hierarchies (cpu,cpuacct,cpuset,memory,pids) or cgroup2 at /sys/fs/cgroup")
}

// checkCgroupRoot: the kubelet refuses to start when its --cgroup-root
// is missing from a hierarchy, and the agent does not create it.
func checkCgroupRoot(cfg Config, hierarchies []string) *Result {
	if cfg.KubeletCgroupRoot == "" || cfg.KubeletCgroupRoot == "/" {
		return nil
	}
	var miss []string
	for _, h := range hierarchies {
		p := filepath.Join(h, cfg.KubeletCgroupRoot)
		if _, err := os.Stat(p); err != nil {
			miss = append(miss, p)
		}
	}
	if len(miss) == 0 {
		return nil
	}
	return &Result{Found: fmt.Sprintf("--kubelet-cgroup-root %s is missing from %d hierarch(ies): %s (the kubelet refuses to start)", cfg.KubeletCgroupRoot, len(miss), strings.Join(miss, " ")),
		Fix: "create it in every hierarchy (mkdir -p " + strings.Join(miss, " ") + "), or drop --kubelet-cgroup-root"}
}

func missing(have map[string]bool, need []string) []string {
	var m []string
	for _, c := range need {
		if !have[c] {
			m = append(m, c)
		}
	}
	return m
}

func fail(r Result, found, fix string) Result {
	r.Status, r.Found, r.Fix = Fail, found, fix
	return r
}

func warn(r Result, found, fix string) Result {
	r.Status, r.Found, r.Fix = Warn, found, fix
	return r
}

func ok(r Result, found string) Result {
	r.Status, r.Found = OK, found
	return r
}

// KVM says whether VM pods get hardware virtualisation: the CPU's VMX or
// SVM flag and a usable KVM device. Without them VM pods run only where
// the owner allows software emulation.
func KVM(cfg Config) Result {
	cfg.defaults()
	r := Result{Check: "kvm"}
	if !cfg.VMPods {
		return ok(r, "VM pods are off (--no-vm-pods)")
	}
	const fix = "enable virtualisation (VT-x/AMD-V) in the firmware and give the evelet service " +
		"%s; or let VM pods run under software emulation with the config item evelet.policy.allow-vm-emulation=true (slow)"
	flag, err := cpuVirtFlag(cfg.CPUInfo)
	if err != nil {
		return warn(r, fmt.Sprintf("cannot read %s: %v", cfg.CPUInfo, err), fmt.Sprintf(fix, cfg.KVMDevice))
	}
	if flag == "" {
		return warn(r, "the CPU reports neither vmx nor svm in "+cfg.CPUInfo+": VM pods need evelet.policy.allow-vm-emulation", fmt.Sprintf(fix, cfg.KVMDevice))
	}
	if err := cfg.kvmProbe(cfg.KVMDevice); err != nil {
		return warn(r, fmt.Sprintf("CPU has %s but %s: VM pods need evelet.policy.allow-vm-emulation", flag, err), fmt.Sprintf(fix, cfg.KVMDevice))
	}
	return ok(r, fmt.Sprintf("CPU has %s, %s creates VMs: VM pods use KVM", flag, cfg.KVMDevice))
}

// createVM opens the KVM device and creates (and drops) a VM, as QEMU
// will: the device can exist and still refuse (nested virtualisation off,
// another hypervisor holding VT-x).
func createVM(path string) error {
	dev, err := os.OpenFile(path, os.O_RDWR|syscall.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no %s", path)
	}
	if err != nil {
		return fmt.Errorf("cannot open %s: %w", path, errors.Unwrap(err))
	}
	defer dev.Close()
	const kvmCreateVM = 0xAE01 // _IO(KVMIO, 0x01)
	fd, _, errno := syscall.Syscall(syscall.SYS_IOCTL, dev.Fd(), kvmCreateVM, 0)
	if errno != 0 {
		return fmt.Errorf("KVM_CREATE_VM on %s fails: %w", path, errno)
	}
	syscall.Close(int(fd))
	return nil
}

// cpuVirtFlag returns "vmx" or "svm" if a CPU in cpuinfo has it.
func cpuVirtFlag(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		k, v, found := strings.Cut(sc.Text(), ":")
		if !found || strings.TrimSpace(k) != "flags" {
			continue
		}
		for _, fl := range strings.Fields(v) {
			if fl == "vmx" || fl == "svm" {
				return fl, nil
			}
		}
	}
	return "", sc.Err()
}

// QEMU says whether the programs VM pods run are on the PATH (cri/vm
// looks them up the same way; without them the agent turns VM pods off).
func QEMU(cfg Config) Result {
	cfg.defaults()
	r := Result{Check: "qemu"}
	if !cfg.VMPods {
		return ok(r, "VM pods are off (--no-vm-pods)")
	}
	var found, miss []string
	for _, p := range []string{"qemu-system-x86_64", "qemu-img"} {
		if path, err := cfg.LookPath(p); err == nil {
			found = append(found, path)
		} else {
			miss = append(miss, p)
		}
	}
	if len(miss) > 0 {
		return fail(r, strings.Join(miss, ", ")+" not on PATH: the agent turns VM pods off",
			"put qemu-system-x86_64 and qemu-img in the evelet image (Debian: qemu-system-x86, qemu-utils), or run the agent with --no-vm-pods")
	}
	return ok(r, strings.Join(found, ", "))
}

// Nft says whether kube-proxy's nftables mode can run (kubeproxy.Tools).
func Nft(cfg Config) Result {
	cfg.defaults()
	r := Result{Check: "nft"}
	if !cfg.KubeProxy {
		return ok(r, "kube-proxy is off (no --kube-proxy)")
	}
	p, err := cfg.LookPath("nft")
	if err != nil {
		return fail(r, "nft not on PATH: kube-proxy (nftables mode) cannot start",
			"put nft (nftables 1.0.1 or later) in the evelet image, or run the agent without --kube-proxy")
	}
	return ok(r, p)
}
