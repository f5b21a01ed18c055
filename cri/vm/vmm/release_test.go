package vmm

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/sirupsen/logrus"
)

// TestCheckUnprivilegedRefuses: a process that kept any of its ids or
// capabilities (this test process) is not let run a guest, and neither is
// a spec without an unprivileged uid.
func TestCheckUnprivilegedRefuses(t *testing.T) {
	err := checkUnprivileged(os.Getpid(), 3000000000, 3000000000)
	if err == nil || !strings.Contains(err.Error(), "did not drop its privileges") {
		t.Errorf("this process passed as QEMU after its drop: %v", err)
	}
	if err := checkUnprivileged(os.Getpid(), 0, 0); err == nil {
		t.Error("uid 0 accepted as QEMU's uid")
	}
}

// TestWatchStopsTheVMOnAPausingDiskError: an error that paused the guest
// (werror=stop) kills QEMU and becomes the exit reason; past the cap
// (EFBIG) it names the rule, the cap and the config item. A read error
// reported to the guest does neither.
func TestWatchStopsTheVMOnAPausingDiskError(t *testing.T) {
	qemu := exec.Command("sleep", "60") // stands in for QEMU
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qemu.Process.Kill(); qemu.Wait() })
	s := &supervisor{spec: Spec{MaxFileSize: 4 << 20}, log: logrus.NewEntry(logrus.StandardLogger()), qemuPID: qemu.Process.Pid}
	ev := make(chan qmp.Event, 3)
	ev <- qmp.Event{Event: "BLOCK_IO_ERROR", Data: map[string]any{"device": "virtio0", "operation": "read", "action": "report", "reason": "Input/output error"}}
	ev <- qmp.Event{Event: "BLOCK_IO_ERROR", Data: map[string]any{"device": "virtio0", "operation": "write", "action": "stop", "reason": "File too large"}}
	ev <- qmp.Event{Event: "BLOCK_IO_ERROR", Data: map[string]any{"device": "virtio0", "operation": "write", "action": "stop", "reason": "No space left on device"}}
	close(ev)
	s.watch(ev)
	if err := qemu.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("QEMU not killed: %v", err)
	}
	reason, msg := s.diskStop()
	if reason != "OverlayLimitExceeded" {
		t.Errorf("reason %q, want OverlayLimitExceeded", reason)
	}
	for _, want := range []string{`evelet guardrail "vm-overlay-max-size"`, "4Mi", "evelet.policy.vm-overlay-max-size", "virtio0"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	s.diskErr = &diskError{device: "virtio0", operation: "write", reason: "No space left on device"}
	if reason, msg := s.diskStop(); reason != "DiskError" || !strings.Contains(msg, "No space left on device") {
		t.Errorf("other write error: %q %q", reason, msg)
	}
	s.diskErr = nil
	if reason, _ := s.diskStop(); reason != "" {
		t.Errorf("no disk error, reason %q", reason)
	}
}
