package agent

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"time"

	"github.com/lf-edge/evelet/agent/upgrade"
	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/internal/layout"
	"k8s.io/client-go/kubernetes"
)

// startUpgrade runs the upgrade coordinator (agent/upgrade) for the joined
// node until ctx ends, when the join came through the EVE channel: only
// EVE's pubsub says that EVE is about to reboot. The returned func waits
// for it to stop.
func (a *Agent) startUpgrade(ctx context.Context, j *intent.Join) (wait func()) {
	if !a.cfg.CoordinateOSUpdates {
		return func() {}
	}
	h := &upgrade.Hook{
		Node: j.NodeName, EVE: a.cfg.eveRoot(),
		StateFile:  layout.State{Dir: a.cfg.StateDir}.UpgradeState(),
		BootMarker: layout.Run{Dir: a.cfg.RunDir}.UpgradeBootMarker(),
		HaveCredentials: func() bool {
			_, ok, _ := a.store.ClientCredentials(time.Now())
			return ok
		},
		Client: func() (kubernetes.Interface, error) { return nodeClient(a.store.KubeconfigPath()) },
		Items:  a.configItems(),
		Started: func(c *upgrade.Coordinator) {
			a.mu.Lock()
			a.upgrader = c
			items := a.items
			a.mu.Unlock()
			c.SetConfigItems(items) // items that changed meanwhile
		},
		Stopped: func() {
			a.mu.Lock()
			a.upgrader = nil
			a.mu.Unlock()
		},
		Log: a.log.WithFields(map[string]any{"component": "upgrade", "node": j.NodeName}),
	}
	done := make(chan struct{})
	go func() { defer close(done); h.Run(ctx) }()
	return func() { <-done }
}

// setUpgradeItems hands the owner's config items to a running coordinator
// (refused ones are reported by publishConfigErrors).
func (a *Agent) setUpgradeItems(items map[string]string) {
	a.mu.Lock()
	c := a.upgrader
	a.mu.Unlock()
	if c != nil {
		c.SetConfigItems(items)
	}
}

// upgradeItemErrors are the refused evelet.upgrade.* items.
func upgradeItemErrors(items map[string]string) []error {
	_, errs := upgrade.SettingsFromConfigItems(items)
	return errs
}

// forgetUpgrade drops an upgrade cycle's state when the device leaves its
// cluster: it belongs to that cluster's Node.
func (a *Agent) forgetUpgrade() {
	p := layout.State{Dir: a.cfg.StateDir}.UpgradeState()
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		a.log.WithError(err).Warn("upgrade state not removed")
	}
}
