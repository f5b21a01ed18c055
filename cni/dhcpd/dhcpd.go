// Package dhcpd runs the CNI reference dhcp plugin as its daemon
// (`dhcp daemon`), which acquires and renews the leases of pod interfaces
// whose NetworkAttachmentDefinition says "ipam": {"type": "dhcp"}, from
// inside each pod's netns. eve-ni refuses such pods without it.
package dhcpd

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"

	"github.com/lf-edge/evelet/internal/backoff"
	"github.com/sirupsen/logrus"
)

// Daemon is one dhcp daemon kept running.
type Daemon struct {
	// Bin is the CNI dhcp plugin; Socket where the daemon listens (eve-ni's
	// settings name it).
	Bin, Socket string
	// RetryMin/RetryMax bound the back-off between restarts.
	RetryMin, RetryMax time.Duration
	Log                *logrus.Entry
}

// Run keeps the daemon running until ctx ends, then stops it (SIGTERM,
// SIGKILL to its process group after 5 s) and removes its socket.
func (d *Daemon) Run(ctx context.Context) {
	// Pdeathsig goes with the thread that forked the child.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	delay := backoff.Backoff{Min: d.RetryMin, Max: d.RetryMax, StableAfter: time.Minute}
	for {
		_ = os.Remove(d.Socket) // a stale socket of a killed daemon blocks the new one
		cmd := exec.Command(d.Bin, "daemon", "-socketpath", d.Socket)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
		started := time.Now()
		if err := cmd.Start(); err != nil {
			d.Log.WithError(err).Error("CNI dhcp daemon did not start")
		} else {
			d.Log.WithField("pid", cmd.Process.Pid).WithField("socket", d.Socket).Info("CNI dhcp daemon started")
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				d.Log.WithError(err).Warn("CNI dhcp daemon exited")
			case <-ctx.Done():
				_ = cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
					<-done
				}
				_ = os.Remove(d.Socket)
				return
			}
		}
		if !backoff.Sleep(ctx, delay.After(time.Since(started))) {
			return
		}
	}
}
