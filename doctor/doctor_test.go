package doctor

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestHealthyDeviceAllOK(t *testing.T) {
	d := newDevice(t)
	rs := d.run()
	for _, r := range rs {
		if r.Status != OK {
			t.Errorf("%s: %s %s (fix: %s), want OK", r.Check, r.Status, r.Found, r.Fix)
		}
	}
	if Failed(rs) {
		t.Error("Failed() on a healthy device")
	}
	want := []string{"role-binaries", "cgroups", "containerd", "kvm", "qemu", "cni", "cni-nad", "cni-vm", "nft", "nft-kernel", "eve-pubsub",
		"apiserver", "clock", "version-skew", "client-cert", "serving-cert"}
	if len(rs) != len(want) {
		t.Fatalf("%d results, want %d: %+v", len(rs), len(want), rs)
	}
	for i, c := range want {
		if rs[i].Check != c {
			t.Errorf("result %d is %q, want %q", i, rs[i].Check, c)
		}
	}
}

// TestEachMissingPrerequisite removes one prerequisite at a time from a
// healthy device and asserts the check that must notice, its verdict and
// its fix.
func TestEachMissingPrerequisite(t *testing.T) {
	for _, tc := range []struct {
		name       string
		remove     func(d *device)
		check      string
		status     Status
		found, fix string
	}{
		{"the kubelet's binary beside evelet", func(d *device) { d.remove("bin/evelet-kubelet") },
			"role-binaries", Fail, "evelet-kubelet: stat", "install the role binaries of the same build beside"},
		{"an executable evelet-vmm (VM pods on)", func(d *device) { d.remove("bin/evelet-vmm"); d.writeMode("bin/evelet-vmm", "", 0o644) },
			"role-binaries", Fail, "evelet-vmm: not an executable file", "make build puts"},
		{"cgroup v1 memory hierarchy", func(d *device) {
			d.mountInfo(strings.ReplaceAll(v1MountInfo, "27 25 0:25 / DIR/sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n", ""))
		}, "cgroups", Fail, "missing memory (the kubelet refuses to start)", "mount the cgroup v1 hierarchies for memory"},
		{"any cgroup filesystem", func(d *device) {
			d.mountInfo("25 1 0:23 / DIR/sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755\n")
		}, "cgroups", Fail, "no cgroup filesystem mounted", "mount cgroup v1 hierarchies"},
		{"cgroup v1 (v2 host, VM pods on)", func(d *device) { d.useCgroup2("cpuset cpu io memory pids") },
			"cgroups", Fail, "VM pods are refused on cgroup v2", "run the agent with --no-vm-pods"},
		{"cgroup v2 pids controller", func(d *device) { d.cfg.VMPods = false; d.useCgroup2("cpuset cpu io memory") },
			"cgroups", Fail, "missing pids", "cgroup.subtree_control"},
		{"the kubelet's cgroup root in one hierarchy", func(d *device) { d.remove(filepath.Join(d.cgroupMount("pids"), "evelet")) },
			"cgroups", Fail, "--kubelet-cgroup-root /evelet is missing from 1 hierarch(ies)", "mkdir -p " + "\x00pids"},
		{"the cgroupfs driver (VM pods on)", func(d *device) { d.cfg.CgroupDriver = "systemd" },
			"cgroups", Fail, "systemd cgroup driver: VM pods are refused", "--cgroup-driver=cgroupfs"},
		{"containerd socket", func(d *device) { d.remove(d.cri.socket) },
			"containerd", Fail, "no containerd socket", "start EVE's user containerd"},
		{"containerd's CNI network", func(d *device) { d.cri.networkReady = false },
			"containerd", Warn, "NetworkReady=false", "give containerd a CNI configuration"},
		{"VMX/SVM", func(d *device) { d.write("proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu vme sse\n") },
			"kvm", Warn, "neither vmx nor svm", "evelet.policy.allow-vm-emulation=true"},
		{"/dev/kvm", func(d *device) { d.remove("dev/kvm") },
			"kvm", Warn, "CPU has vmx but no " + "", "give the evelet service"},
		{"qemu-system-x86_64", func(d *device) { delete(d.tools, "qemu-system-x86_64") },
			"qemu", Fail, "qemu-system-x86_64 not on PATH", "qemu-system-x86"},
		{"qemu-img", func(d *device) { delete(d.tools, "qemu-img") },
			"qemu", Fail, "qemu-img not on PATH", "qemu-utils"},
		{"nft", func(d *device) { delete(d.tools, "nft") },
			"nft", Fail, "nft not on PATH", "nftables 1.0.1 or later"},
		{"kernel 5.13", func(d *device) { d.cfg.KernelRelease = "5.10.192-tegra" },
			"nft-kernel", Fail, "kernel 5.10.192-tegra: kube-proxy's nftables mode needs 5.13 or later", "evelet.kube-proxy=false"},
		{"NFT_NUMGEN", func(d *device) { d.kernelConfig(strings.Replace(eveKernelConfig, "CONFIG_NFT_NUMGEN=m\n", "", 1)) },
			"nft-kernel", Fail, "lacks CONFIG_NFT_NUMGEN", "build EVE's kernel with CONFIG_NFT_NUMGEN (=m is enough)"},
		{"the kernel's config", func(d *device) { d.remove("proc/config.gz") },
			"nft-kernel", Warn, "its configuration is not readable", "CONFIG_NFT_NUMGEN"},
		{"default network conflist", func(d *device) { d.remove("cni/conf/10-default.conflist") },
			"cni", Fail, `no CNI network named "evelet-default"`, "put the default pod network's conflist"},
		{"default network's plugin", func(d *device) { d.remove("cni/bin/bridge") },
			"cni", Fail, "needs bridge", "install the CNI plugins bridge into"},
		{"default network's IPAM", func(d *device) { d.remove("cni/bin/host-local") },
			"cni", Fail, "needs host-local", "install the CNI plugins host-local"},
		{"a NAD IPAM plugin", func(d *device) { d.remove("cni/bin/static") },
			"cni-nad", Warn, "may use static", "--cni-allowed-ipam"},
		{"VM pods' network config", func(d *device) { d.remove("vm/conf/10-vm.conflist") },
			"cni-vm", Fail, "no CNI configuration in", "put VM pods' network conflist"},
		{"VM pods' plugin", func(d *device) { d.remove("vm/bin2/portmap") },
			"cni-vm", Fail, `VM network "vm-net" needs portmap`, "--vm-cni-bin-dir"},
		{"a non-executable VM plugin", func(d *device) { os.Chmod(d.path("vm/bin1/bridge"), 0o644) },
			"cni-vm", Fail, `needs bridge`, "install the CNI plugins bridge"},
		{"zedagent's pubsub", func(d *device) { d.remove("run/zedagent") },
			"eve-pubsub", Fail, "no EVE pubsub at", "--eve-run"},
		{"the checkpoint", func(d *device) { d.remove("persist/checkpoint") },
			"eve-pubsub", Fail, "no checkpointed config", "--eve-persist"},
		{"EdgeNodeClusterConfig", func(d *device) { d.remove("run/zedagent/EdgeNodeClusterConfig") },
			"eve-pubsub", Warn, "no EdgeNodeClusterConfig", "add the device to a cluster"},
		{"the apiserver", func(d *device) { d.api.Close() },
			"apiserver", Fail, d0URL, "check the device's route and firewall"},
		{"the cluster CA", func(d *device) {
			d.writeMode(d.creds.ClusterCA(), selfSigned(d.t, "other-ca", time.Now().Add(-time.Hour), time.Now().Add(time.Hour)), 0o600)
		}, "apiserver", Fail, "does not verify against the cluster CA", "remove the device from the cluster and add it again"},
		{"a synchronised clock", func(d *device) { d.cfg.Now = func() time.Time { return time.Now().Add(2 * time.Minute) } },
			"clock", Fail, "ahead of the apiserver's", "synchronise the device's clock"},
		{"a close clock", func(d *device) { d.cfg.Now = func() time.Time { return time.Now().Add(-20 * time.Second) } },
			"clock", Warn, "behind the apiserver's", "synchronise the device's clock"},
		{"an apiserver at most 3 minors newer", func(d *device) { d.apiVer = "v1.39.0" },
			"version-skew", Fail, "4 minor versions older (at most 3 supported)", "at least v1.36"},
		{"an apiserver no older than the kubelet", func(d *device) { d.apiVer = "v1.34.2" },
			"version-skew", Fail, "the kubelet is newer than the apiserver", "upgrade the control plane first"},
		{"the client certificate", func(d *device) { d.remove(d.creds.CertDir() + "/kubelet-client-current.pem") },
			"client-cert", Fail, "joined, but no client certificate", "kubectl get csr"},
		{"a valid client certificate", func(d *device) { d.writeClient(time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour)) },
			"client-cert", Fail, "expired at", "restart the agent"},
		{"client certificate rotation", func(d *device) { d.writeClient(time.Now().Add(-99*24*time.Hour), time.Now().Add(24*time.Hour)) },
			"client-cert", Warn, "should have rotated it by now", "rotation errors"},
		{"the serving certificate", func(d *device) { d.remove(d.creds.CertDir() + "/kubelet-server-current.pem") },
			"serving-cert", Fail, "serving CSR is pending", "kubectl certificate approve"},
		{"a valid serving certificate", func(d *device) { d.writeServing(time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour)) },
			"serving-cert", Fail, "renewal CSR is not approved", "Node eve-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDevice(t)
			tc.remove(d)
			rs := d.run()
			r := find(t, rs, tc.check)
			found, fix := tc.found, tc.fix
			if found == d0URL {
				found = d.api.URL
			}
			fix = strings.ReplaceAll(fix, "\x00pids", filepath.Join(d.cgroupMount("pids"), "evelet"))
			if r.Status != tc.status || !strings.Contains(r.Found, found) || !strings.Contains(r.Fix, fix) {
				t.Errorf("%s: %s %q (fix %q), want %s, found containing %q, fix containing %q", r.Check, r.Status, r.Found, r.Fix, tc.status, found, fix)
			}
			if got := Failed(rs); got != (tc.status == Fail) {
				t.Errorf("Failed() = %v with %s %s", got, tc.check, tc.status)
			}
			// Removing one prerequisite is noticed by its check alone
			// (the clock and version checks share the apiserver probe).
			for _, o := range rs {
				if o.Check != tc.check && o.Status != OK && !probeDependent(tc.check, o.Check) {
					t.Errorf("also %s: %s %s", o.Check, o.Status, o.Found)
				}
			}
		})
	}
}

// d0URL stands for the test apiserver's URL, known only once it runs.
const d0URL = "\x00apiserver-url"

func probeDependent(cause, other string) bool {
	// host-local is both the default network's IPAM and one NADs may use.
	return cause == "apiserver" && (other == "clock" || other == "version-skew") ||
		cause == "cni" && other == "cni-nad"
}

func TestVMPodsOff(t *testing.T) {
	d := newDevice(t)
	d.cfg.VMPods = false
	d.useCgroup2("cpuset cpu io memory pids")
	delete(d.tools, "qemu-system-x86_64")
	d.remove("dev/kvm")
	for _, r := range d.run() {
		if r.Status != OK {
			t.Errorf("%s: %s %s, want OK with VM pods off", r.Check, r.Status, r.Found)
		}
	}
}

func TestSupportedSkew(t *testing.T) {
	for _, v := range []string{"v1.35.0", "v1.36.1", "v1.38.2"} {
		d := newDevice(t)
		d.apiVer = v
		if r := find(t, d.run(), "version-skew"); r.Status != OK {
			t.Errorf("apiserver %s: %s %s, want OK", v, r.Status, r.Found)
		}
	}
}

func TestNotJoined(t *testing.T) {
	d := newDevice(t)
	d.remove(d.creds.Dir)
	rs := d.run()
	for _, c := range []string{"apiserver", "clock", "version-skew", "client-cert", "serving-cert"} {
		if r := find(t, rs, c); r.Status != Warn || !strings.Contains(r.Found, "not joined") {
			t.Errorf("%s: %s %s, want WARN not joined", c, r.Status, r.Found)
		}
	}
	if Failed(rs) {
		t.Error("a device that has not joined yet fails")
	}
}

func TestJoinFileSkipsEVE(t *testing.T) {
	d := newDevice(t)
	d.remove("run/zedagent")
	d.cfg.JoinFile = d.path("join.yaml")
	d.write("join.yaml", "apiServer: x\n")
	if r := find(t, d.run(), "eve-pubsub"); r.Status != OK {
		t.Errorf("eve-pubsub with a join file: %s %s", r.Status, r.Found)
	}
}

func TestOutput(t *testing.T) {
	rs := []Result{{Check: "kvm", Status: Warn, Found: "no /dev/kvm", Fix: "give it /dev/kvm"}, {Check: "qemu", Status: OK, Found: "/usr/bin/qemu-img"}}
	var b bytes.Buffer
	if err := WriteText(&b, rs); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "WARN  kvm   no /dev/kvm\n") || !strings.Contains(b.String(), "fix: give it /dev/kvm") {
		t.Errorf("text output:\n%s", b.String())
	}
	b.Reset()
	if err := WriteJSON(&b, rs); err != nil {
		t.Fatal(err)
	}
	var back []Result
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || len(back) != 2 || back[0] != rs[0] {
		t.Errorf("json output %s: %v", b.String(), err)
	}
}

// TestCreateVM runs the real KVM probe on devices that are not KVM.
func TestCreateVM(t *testing.T) {
	if err := createVM(filepath.Join(t.TempDir(), "kvm")); err == nil || !strings.HasPrefix(err.Error(), "no ") {
		t.Errorf("missing device: %v", err)
	}
	if err := createVM("/dev/null"); err == nil || !strings.Contains(err.Error(), "KVM_CREATE_VM on /dev/null fails") {
		t.Errorf("/dev/null: %v", err)
	}
}
