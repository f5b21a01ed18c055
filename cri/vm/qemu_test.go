package vm

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri/vm/vmm"
	"github.com/lf-edge/evelet/images/vmguest"
	"github.com/lf-edge/evelet/images/vmguest/vmguesttest"
)

// noImages stands in for the CRI image service where no image is resolved.
type noImages struct{ runtimeapi.ImageServiceClient }

// TestGuestWithoutContainerd boots h3's real test guest (disk form, TCG)
// through the backend with the image's disk given directly (no containerd,
// so no heavy lock): ready line in the CRI log, exec through the guest
// agent, attach to the serial console, the VM surviving a new Backend, a
// graceful ACPI stop (exit 0) and a clean removal. It also logs QEMU's RSS
// beyond the guest's RAM.
func TestGuestWithoutContainerd(t *testing.T) {
	needQEMU(t)
	t.Setenv(supervisorEnv, "1")
	imgs := vmguesttest.Images(t)
	short, err := os.MkdirTemp("/tmp", "h4vmq-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(short) })
	diskDir := filepath.Join(short, "disk")
	os.MkdirAll(diskDir, 0o700)
	copyFile(t, imgs.Disk, filepath.Join(diskDir, "guest.qcow2"))
	h := &harness{t: t, stateDir: filepath.Join(short, "vm"), netnsDir: filepath.Join(short, "netns"), logDir: filepath.Join(short, "logs"), emulate: true, noKVM: true,
		cgroupParent: "/" + filepath.Base(short)}
	hs, err := hierarchies()
	if err != nil || len(hs) == 0 {
		t.Fatalf("cgroup v1 hierarchies: %v %v", hs, err)
	}
	t.Cleanup(func() {
		for _, hy := range hs {
			os.Remove(filepath.Join(hy.dir, h.cgroupParent))
		}
	})
	sup := []string{os.Args[0]}
	if bin := os.Getenv("EVELET_BIN"); bin != "" {
		sup = []string{bin, "vmm"} // the real `evelet vmm`
	}
	newB := func() *Backend {
		b, err := New(Config{StateDir: h.stateDir, ContainerdSocket: filepath.Join(short, "none.sock"), Images: noImages{},
			NetnsDir: h.netnsDir, Supervisor: sup, KVMDevice: "/nonexistent/kvm",
			AllowEmulation: func() bool { return true }, Log: logrus.NewEntry(logrus.StandardLogger())})
		if err != nil {
			t.Fatal(err)
		}
		b.resolveDisk = func(context.Context, string) (string, error) { return diskDir, nil }
		t.Cleanup(func() { b.Close() })
		return b
	}
	b := newB()
	t.Cleanup(func() {
		if t.Failed() {
			dumpVMLogs(t, h.stateDir)
		}
	})
	ctx := context.Background()
	created := time.Now()
	sb := h.sandbox(b, "q")
	t.Cleanup(func() {
		b.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb})
	})
	cr, err := b.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb, Config: containerConfig("vm", vmguest.DiskRef, 256*mib)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
		t.Fatal(err)
	}
	running := time.Since(created)
	waitLog(t, filepath.Join(h.logDir, "q", "vm", "0.log"), vmguest.ReadyLine, 5*time.Minute)
	t.Logf("create -> running %v, create -> ready line %v (TCG)", running.Round(time.Millisecond), time.Since(created).Round(time.Millisecond))
	logQEMURSS(t, b, cr.ContainerId)

	// QEMU runs in the VM's cgroup under the pod's, with guest RAM plus
	// QEMU's overhead as the memory limit.
	rel := containerCgroup(h.cgroupParent, cr.ContainerId)
	qemuPID := vmm.ReadPID(filepath.Join(b.store.containerDir(cr.ContainerId), vmm.QEMUPIDFile))
	for _, hy := range hs {
		procs, err := os.ReadFile(filepath.Join(hy.dir, rel, "cgroup.procs"))
		if err != nil || !strings.Contains("\n"+string(procs), "\n"+itoa(qemuPID)+"\n") {
			t.Errorf("QEMU %d not in %s: %q %v", qemuPID, filepath.Join(hy.dir, rel), procs, err)
		}
	}
	if v, ok := cgroupValue(rel, "memory", "memory.limit_in_bytes"); !ok || v != (256+QEMUOverheadMiB)*mib {
		t.Errorf("VM memory limit %d %v, want %d", v, ok, (256+QEMUOverheadMiB)*mib)
	}

	// QEMU runs the guest without root (issue 21 item 11).
	assertQEMUUnprivileged(t, b, cr.ContainerId)

	// The shim restarts: a new Backend answers for the same VM.
	b = newB()
	waitState(t, b, cr.ContainerId, runtimeapi.ContainerState_CONTAINER_RUNNING, time.Second)
	ex, err := b.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: cr.ContainerId, Cmd: []string{"/bin/sh", "-c", "echo from-guest; exit 3"}, Timeout: 120})
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(ex.Stdout)) != "from-guest" || ex.ExitCode != 3 {
		t.Errorf("exec in guest: %q exit %d", ex.Stdout, ex.ExitCode)
	}
	st, err := b.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: cr.ContainerId})
	if err != nil || st.GetStats().GetAttributes().GetId() != cr.ContainerId || st.GetStats().GetCpu().GetUsageCoreNanoSeconds().GetValue() == 0 ||
		st.GetStats().GetMemory().GetWorkingSetBytes().GetValue() < 64*mib {
		t.Errorf("stats from the VM's cgroup: %v %v", st, err)
	}

	if _, err := b.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: cr.ContainerId, Timeout: 180}); err != nil {
		t.Fatal(err)
	}
	cs := waitState(t, b, cr.ContainerId, runtimeapi.ContainerState_CONTAINER_EXITED, 5*time.Second)
	if cs.ExitCode != 0 {
		t.Errorf("graceful stop: exit %d (%s %s), want 0: the guest powers off on the ACPI button", cs.ExitCode, cs.Reason, cs.Message)
	}
	if _, err := b.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{b.store.containerDir(cr.ContainerId), filepath.Join(h.netnsDir, sb), filepath.Join(hs[0].dir, rel)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left (%v)", p, err)
		}
	}
}

// TestKernelBootWithoutContainerd boots h3's guest in the direct kernel
// boot form (/disk/vmlinuz, /disk/initrd, /disk/cmdline) through the
// backend: no overlay is made, the ready line reaches the log, and a stop
// with no grace period kills QEMU (137).
func TestKernelBootWithoutContainerd(t *testing.T) {
	needQEMU(t)
	t.Setenv(supervisorEnv, "1")
	imgs := vmguesttest.Images(t)
	short, err := os.MkdirTemp("/tmp", "h4vmk-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(short) })
	diskDir := filepath.Join(short, "disk")
	os.MkdirAll(diskDir, 0o700)
	copyFile(t, imgs.Kernel, filepath.Join(diskDir, kernelName))
	copyFile(t, imgs.Initrd, filepath.Join(diskDir, initrdName))
	copyFile(t, imgs.Cmdline, filepath.Join(diskDir, cmdlineName))
	h := &harness{t: t, stateDir: filepath.Join(short, "vm"), netnsDir: filepath.Join(short, "netns"), logDir: filepath.Join(short, "logs")}
	b, err := New(Config{StateDir: h.stateDir, ContainerdSocket: filepath.Join(short, "none.sock"), Images: noImages{},
		NetnsDir: h.netnsDir, Supervisor: []string{os.Args[0]}, KVMDevice: "/nonexistent/kvm",
		AllowEmulation: func() bool { return true }, Log: logrus.NewEntry(logrus.StandardLogger())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	b.resolveDisk = func(context.Context, string) (string, error) { return diskDir, nil }
	t.Cleanup(func() {
		if t.Failed() {
			dumpVMLogs(t, h.stateDir)
		}
	})
	ctx := context.Background()
	sb := h.sandbox(b, "k")
	t.Cleanup(func() {
		b.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb})
	})
	cr, err := b.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb, Config: containerConfig("vm", vmguest.KernelRef, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(b.store.containerDir(cr.ContainerId), overlayFile)); !os.IsNotExist(err) {
		t.Errorf("kernel boot made an overlay (%v)", err)
	}
	if _, err := b.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
		t.Fatal(err)
	}
	waitLog(t, filepath.Join(h.logDir, "k", "vm", "0.log"), vmguest.ReadyLine, 5*time.Minute)
	if _, err := b.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: cr.ContainerId}); err != nil {
		t.Fatal(err)
	}
	if cs := waitState(t, b, cr.ContainerId, runtimeapi.ContainerState_CONTAINER_EXITED, 5*time.Second); cs.ExitCode != 137 {
		t.Errorf("stop without grace: exit %d, want 137", cs.ExitCode)
	}
}

func needQEMU(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (netns)")
	}
	for _, b := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed (hack/install-prereqs.sh installs it)", b)
		}
	}
	logEmulation(t)
}

// logEmulation says plainly when the VMs of a test run under QEMU's
// software emulation: slow, and not what a device with KVM does.
func logEmulation(t *testing.T) {
	t.Helper()
	if !KVMUsable(DefaultKVMDevice) {
		t.Logf("no usable %s here: this test's VMs run under QEMU's software emulation (TCG), slowly", DefaultKVMDevice)
	} else {
		t.Logf("%s is usable here, but this test's VMs run under QEMU's software emulation (TCG), as on CI", DefaultKVMDevice)
	}
}

func copyFile(t *testing.T, from, to string) {
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	out.Close()
}

// assertQEMUUnprivileged checks, while the guest runs, that QEMU has
// dropped root: real, effective, saved and file-system uid and gid are the
// VM's own (non-zero, from the VM range), its only group is that gid, it
// holds no capability, and it is under seccomp with no_new_privs. What it
// could reopen stays out of its reach: the state directory and the
// container directory are root's and 0700, and nothing in them belongs to
// the VM's uid.
func assertQEMUUnprivileged(t *testing.T, b *Backend, id string) {
	t.Helper()
	dir := b.store.containerDir(id)
	pid := vmm.ReadPID(filepath.Join(dir, vmm.QEMUPIDFile))
	st, err := os.ReadFile(filepath.Join("/proc", itoa(pid), "status"))
	if err != nil {
		t.Fatalf("QEMU's status: %v", err)
	}
	fields := map[string]string{}
	for _, l := range strings.Split(string(st), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			fields[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	uid := strings.Fields(fields["Uid"])
	if len(uid) != 4 {
		t.Fatalf("QEMU's Uid line: %q", fields["Uid"])
	}
	n, _ := strconv.ParseUint(uid[0], 10, 32)
	if n < FirstVMUID || n >= FirstVMUID+VMUIDCount {
		t.Errorf("QEMU runs as uid %d, want one of the VM range [%d, %d)", n, FirstVMUID, FirstVMUID+VMUIDCount)
	}
	u := uid[0]
	for k, want := range map[string]string{
		"Uid": strings.Join([]string{u, u, u, u}, " "), "Gid": strings.Join([]string{u, u, u, u}, " "), "Groups": u,
		"CapInh": "0000000000000000", "CapPrm": "0000000000000000", "CapEff": "0000000000000000", "CapAmb": "0000000000000000",
		"NoNewPrivs": "1", "Seccomp": "2",
	} {
		if fields[k] != want {
			t.Errorf("QEMU (pid %d) %s: %q, want %q", pid, k, fields[k], want)
		}
	}
	t.Logf("QEMU pid %d: Uid %s, Gid %s, CapEff %s, CapPrm %s, Seccomp %s", pid, fields["Uid"], fields["Gid"], fields["CapEff"], fields["CapPrm"], fields["Seccomp"])
	for _, d := range []string{b.cfg.StateDir, dir} {
		var fi syscall.Stat_t
		if err := syscall.Stat(d, &fi); err != nil || fi.Uid != 0 || fi.Mode&0o777 != 0o700 {
			t.Errorf("%s: owner %d mode %o (%v), want root's and 0700", d, fi.Uid, fi.Mode&0o777, err)
		}
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		var fi syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dir, e.Name()), &fi); err == nil && fi.Uid != 0 {
			t.Errorf("%s belongs to uid %d: only root may reach the VM's files", e.Name(), fi.Uid)
		}
	}
}
