package agent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/lf-edge/evelet/internal/backoff"
)

// DHCPSocket is the socket of the CNI dhcp daemon the agent runs for pods
// with dhcp IPAM on an EVE Switch NI (eve-ni's settings name it).
func (c *Config) DHCPSocket() string { return filepath.Join(c.RunDir, "cni-dhcp.sock") }

// dhcpDaemon is the CNI dhcp plugin in the runtime's CNI bin dir, "" when
// multi-network pods are off or the plugin is not installed.
func (a *Agent) dhcpDaemon() string {
	if !a.cfg.CNI.enabled() {
		return ""
	}
	p := filepath.Join(a.cfg.CNI.BinDir, "dhcp")
	if fi, err := os.Stat(p); err != nil || fi.IsDir() {
		return ""
	}
	return p
}

// runDHCPDaemon keeps `dhcp daemon` running until ctx ends: it acquires and
// renews the leases of pod interfaces whose NAD says "ipam": {"type":
// "dhcp"}, from inside each pod's netns. Without it eve-ni refuses such pods.
func (a *Agent) runDHCPDaemon(ctx context.Context) {
	bin := a.dhcpDaemon()
	if bin == "" {
		return
	}
	log := a.log.WithField("component", "cni-dhcp")
	// Pdeathsig goes with the thread that forked the child.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	delay := backoff.Backoff{Min: a.cfg.RetryMin, Max: a.cfg.RetryMax, StableAfter: time.Minute}
	sock := a.cfg.DHCPSocket()
	for {
		_ = os.Remove(sock) // a stale socket of a killed daemon blocks the new one
		cmd := exec.Command(bin, "daemon", "-socketpath", sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
		started := time.Now()
		if err := cmd.Start(); err != nil {
			log.WithError(err).Error("CNI dhcp daemon did not start")
		} else {
			log.WithField("pid", cmd.Process.Pid).WithField("socket", sock).Info("CNI dhcp daemon started")
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				log.WithError(err).Warn("CNI dhcp daemon exited")
			case <-ctx.Done():
				_ = cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
					<-done
				}
				_ = os.Remove(sock)
				return
			}
		}
		if !backoff.Sleep(ctx, delay.After(time.Since(started))) {
			return
		}
	}
}
