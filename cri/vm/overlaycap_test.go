package vm

import (
	"context"
	"os"
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

// TestOverlayCapped is issue 21 item 9's cap: a real guest (disk form, TCG)
// whose owner caps the writable overlay at 4 MiB writes 20 MiB to its disk.
// QEMU runs with RLIMIT_FSIZE at the cap and SIGXFSZ ignored, so the write
// past it fails with EFBIG, QEMU pauses the guest (werror=stop) and the
// supervisor ends the VM: the container exits with reason
// OverlayLimitExceeded and a message naming the rule and the config item,
// and the overlay, apparent and allocated, stays within the cap.
func TestOverlayCapped(t *testing.T) {
	needQEMU(t)
	t.Setenv(supervisorEnv, "1")
	const limit = 4 << 20
	imgs := vmguesttest.Images(t)
	short, err := os.MkdirTemp("/tmp", "h4vmo-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(short) })
	diskDir := filepath.Join(short, "disk")
	os.MkdirAll(diskDir, 0o700)
	copyFile(t, imgs.Disk, filepath.Join(diskDir, "guest.qcow2"))
	h := &harness{t: t, stateDir: filepath.Join(short, "vm"), netnsDir: filepath.Join(short, "netns"), logDir: filepath.Join(short, "logs")}
	b, err := New(Config{StateDir: h.stateDir, ContainerdSocket: filepath.Join(short, "none.sock"), Images: noImages{},
		NetnsDir: h.netnsDir, Supervisor: []string{os.Args[0]}, KVMDevice: "/nonexistent/kvm",
		AllowEmulation: func() bool { return true }, OverlayMaxSize: func() int64 { return limit },
		Log: logrus.NewEntry(logrus.StandardLogger())})
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
	sb := h.sandbox(b, "o")
	cr, err := b.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb, Config: containerConfig("vm", vmguest.DiskRef, 256*mib)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
		t.Fatal(err)
	}
	waitLog(t, filepath.Join(h.logDir, "o", "vm", "0.log"), vmguest.ReadyLine, 5*time.Minute)

	dir := b.store.containerDir(cr.ContainerId)
	pid := itoa(vmm.ReadPID(filepath.Join(dir, vmm.QEMUPIDFile)))
	limits, _ := os.ReadFile(filepath.Join("/proc", pid, "limits"))
	if !strings.Contains(strings.Join(strings.Fields(string(limits)), " "), "Max file size "+strconv.Itoa(limit)+" "+strconv.Itoa(limit)+" bytes") {
		t.Errorf("QEMU's RLIMIT_FSIZE is not the cap %d:\n%s", limit, limits)
	}
	status, _ := os.ReadFile(filepath.Join("/proc", pid, "status"))
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "SigIgn:"); ok {
			mask, _ := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if mask&(1<<(uint(syscall.SIGXFSZ)-1)) == 0 {
				t.Errorf("QEMU does not ignore SIGXFSZ (SigIgn %s): past the cap it would die of it", strings.TrimSpace(v))
			}
		}
	}

	// The guest writes 20 MiB to its disk, 5 times the cap; its exec may
	// end with the VM.
	ex, err := b.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: cr.ContainerId,
		Cmd: []string{"/bin/sh", "-c", "dd if=/dev/zero of=/dev/vda bs=1M count=20 conv=fsync"}, Timeout: 300})
	t.Logf("guest dd: %v, exit %d, stderr %q", err, ex.GetExitCode(), ex.GetStderr())

	var fi syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, overlayFile), &fi); err != nil {
		t.Fatal(err)
	}
	if fi.Size > limit || fi.Blocks*512 > limit {
		t.Errorf("overlay grew past the cap %d: size %d, allocated %d", limit, fi.Size, fi.Blocks*512)
	}
	t.Logf("overlay after the guest's write: size %d, allocated %d (cap %d)", fi.Size, fi.Blocks*512, limit)
	cs := waitState(t, b, cr.ContainerId, runtimeapi.ContainerState_CONTAINER_EXITED, 2*time.Minute)
	if cs.Reason != "OverlayLimitExceeded" || !strings.Contains(cs.Message, `evelet guardrail "vm-overlay-max-size"`) ||
		!strings.Contains(cs.Message, "evelet.policy.vm-overlay-max-size") || !strings.Contains(cs.Message, "4Mi") {
		t.Errorf("exit: reason %q message %q, want OverlayLimitExceeded naming the rule, the cap and the config item", cs.Reason, cs.Message)
	}
	t.Logf("container exit: %d %s: %s", cs.ExitCode, cs.Reason, cs.Message)
}
