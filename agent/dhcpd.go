package agent

import (
	"context"
	"github.com/lf-edge/evelet/internal/layout"
	"os"
	"path/filepath"

	"github.com/lf-edge/evelet/cni/dhcpd"
)

// DHCPSocket is the socket of the CNI dhcp daemon the agent runs for pods
// with dhcp IPAM on an EVE Switch NI (eve-ni's settings name it).
func (c *Config) DHCPSocket() string { return layout.Run{Dir: c.RunDir}.DHCPSocket() }

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

// runDHCPDaemon keeps the CNI dhcp daemon (cni/dhcpd) running until ctx
// ends, when the plugin is installed.
func (a *Agent) runDHCPDaemon(ctx context.Context) {
	bin := a.dhcpDaemon()
	if bin == "" {
		return
	}
	d := &dhcpd.Daemon{Bin: bin, Socket: a.cfg.DHCPSocket(), RetryMin: a.cfg.RetryMin, RetryMax: a.cfg.RetryMax,
		Log: a.log.WithField("component", "cni-dhcp")}
	d.Run(ctx)
}
