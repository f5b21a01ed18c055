package vmm

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/wait"
)

// monitorTimeout bounds the wait for QEMU's monitor: QEMU serves it once
// its start-up is done, which under TCG on a loaded device takes seconds.
const monitorTimeout = 60 * time.Second

// release lets the guest run: QEMU was started paused (-S); once its
// monitor answers, QEMU's start-up is over and it has dropped to the
// spec's uid and gid (QEMU changes uid at the end of its start-up, before
// its main loop serves the monitor). The supervisor checks that from
// /proc, then resumes the guest. The monitor stays open to hear QEMU's
// events.
func (s *supervisor) release(pid int) (*qmp.SocketMonitor, error) {
	if s.spec.Monitor == "" {
		return nil, nil
	}
	var mon *qmp.SocketMonitor
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, monitorTimeout, true, func(context.Context) (bool, error) {
		if !ProcessAlive(pid, s.dir) {
			return false, fmt.Errorf("QEMU exited during its start-up")
		}
		m, err := qmp.NewSocketMonitor("unix", s.spec.Monitor, 2*time.Second)
		if err != nil {
			return false, nil // not listening yet
		}
		if err := m.Connect(); err != nil {
			m.Disconnect()
			return false, nil
		}
		mon = m
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("QEMU's monitor %s: %w", s.spec.Monitor, err)
	}
	if err := checkUnprivileged(pid, s.spec.UID, s.spec.GID); err != nil {
		mon.Disconnect()
		return nil, err
	}
	// Events must be read from now on: the monitor's reader blocks on an
	// unread event, and with it the answer to "cont".
	events, _ := mon.Events(context.Background())
	go s.watch(events)
	if _, err := mon.Run([]byte(`{"execute":"cont"}`)); err != nil {
		mon.Disconnect()
		return nil, fmt.Errorf("resuming the guest: %w", err)
	}
	return mon, nil
}

// watch reads QEMU's events until the monitor closes. A disk write error
// (QEMU's drive has werror=stop: the guest is paused on it) ends the VM:
// past the overlay's cap it is EFBIG, and a guest left paused would look
// Running to Kubernetes forever.
func (s *supervisor) watch(events <-chan qmp.Event) {
	for e := range events {
		// Only errors that paused the guest: a read error is reported to
		// the guest (rerror's default) and it goes on.
		if action, _ := e.Data["action"].(string); e.Event != "BLOCK_IO_ERROR" || action != "stop" {
			continue
		}
		d := &diskError{}
		d.device, _ = e.Data["device"].(string)
		d.operation, _ = e.Data["operation"].(string)
		d.reason, _ = e.Data["reason"].(string)
		s.mu.Lock()
		first := s.diskErr == nil
		if first {
			s.diskErr = d
		}
		s.mu.Unlock()
		if first && s.qemuPID > 0 { // never kill(0, ...): that is our process group
			s.log.WithFields(map[string]any{"device": d.device, "operation": d.operation, "reason": d.reason}).Warn("disk I/O error: stopping the VM")
			syscall.Kill(s.qemuPID, syscall.SIGKILL)
		}
	}
}

// diskError is a BLOCK_IO_ERROR event of QEMU.
type diskError struct{ device, operation, reason string }

// limitFileSize caps the size of every file QEMU writes (its overlay).
// The guest has not run yet (QEMU is paused until release).
func (s *supervisor) limitFileSize(pid int) error {
	if s.spec.MaxFileSize <= 0 {
		return nil
	}
	n := uint64(s.spec.MaxFileSize)
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: n, Max: n}, nil); err != nil {
		return fmt.Errorf("capping QEMU's file size: %w", err)
	}
	return nil
}

// diskStop gives the container's exit reason and message when the VM was
// stopped for a disk write error, or "".
func (s *supervisor) diskStop() (string, string) {
	s.mu.Lock()
	d := s.diskErr
	s.mu.Unlock()
	if d == nil {
		return "", ""
	}
	if d.reason == unix.EFBIG.Error() || strings.EqualFold(d.reason, "File too large") {
		return "OverlayLimitExceeded", fmt.Sprintf("evelet guardrail %q: the guest wrote past its writable overlay's cap of %d bytes (%s); QEMU got %q writing disk %s and the VM was stopped; the device owner sets the cap with config item evelet.policy.vm-overlay-max-size",
			RuleOverlayMaxSize, s.spec.MaxFileSize, resource.NewQuantity(s.spec.MaxFileSize, resource.BinarySI), d.reason, d.device)
	}
	return "DiskError", fmt.Sprintf("QEMU could not %s disk %s (%s); the VM was stopped", d.operation, d.device, d.reason)
}

// checkUnprivileged says why process pid does not run as uid/gid
// (real, effective, saved and file-system ids, and gid as its only group)
// with no capability, or nil if it does.
func checkUnprivileged(pid int, uid, gid uint32) error {
	if uid == 0 || gid == 0 {
		return fmt.Errorf("no unprivileged uid and gid for QEMU (uid %d, gid %d)", uid, gid)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return err
	}
	want := map[string]string{
		"Uid":    strings.Repeat(strconv.FormatUint(uint64(uid), 10)+" ", 4),
		"Gid":    strings.Repeat(strconv.FormatUint(uint64(gid), 10)+" ", 4),
		"Groups": strconv.FormatUint(uint64(gid), 10) + " ",
		"CapInh": "0000000000000000 ", "CapPrm": "0000000000000000 ", "CapEff": "0000000000000000 ", "CapAmb": "0000000000000000 ",
	}
	got := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			if _, ok := want[k]; ok {
				got[k] = strings.Join(strings.Fields(v), " ") + " "
			}
		}
	}
	for k, w := range want {
		if got[k] != w {
			return fmt.Errorf("QEMU (pid %d) did not drop its privileges: %s is %q, want %q", pid, k, strings.TrimSpace(got[k]), strings.TrimSpace(w))
		}
	}
	return nil
}
