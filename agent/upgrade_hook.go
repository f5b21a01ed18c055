package agent

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/lf-edge/evelet/agent/upgrade"
	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/eve/pubsub/socketpub"
	"github.com/lf-edge/evelet/internal/layout"
	"k8s.io/apimachinery/pkg/util/wait"
)

// upgradeCheckEvery is how often the upgrade hook looks for the node's own
// credentials (the kubelet writes them once its CSR is approved).
const upgradeCheckEvery = 2 * time.Second

// startUpgrade runs the upgrade coordinator (agent/upgrade) for the joined
// node until ctx ends, when the join came through the EVE channel: only
// EVE's pubsub says that EVE is about to reboot. The returned func waits
// for it to stop.
func (a *Agent) startUpgrade(ctx context.Context, j *intent.Join) (wait func()) {
	if !a.cfg.CoordinateOSUpdates {
		return func() {}
	}
	done := make(chan struct{})
	go func() { defer close(done); a.runUpgrade(ctx, j) }()
	return func() { <-done }
}

func (a *Agent) runUpgrade(ctx context.Context, j *intent.Join) {
	log := a.log.WithFields(map[string]any{"component": "upgrade", "node": j.NodeName})
	// The coordinator acts with the node's own identity, which exists only
	// after the kubelet's TLS bootstrap.
	err := wait.PollUntilContextCancel(ctx, upgradeCheckEvery, true, func(context.Context) (bool, error) {
		_, ok, _ := a.store.ClientCredentials(time.Now())
		return ok, nil
	})
	if err != nil {
		return
	}
	cs, err := nodeClient(a.store.KubeconfigPath())
	if err != nil {
		log.WithError(err).Error("no node client; OS updates are not coordinated")
		return
	}
	cfg := upgrade.Config{Client: cs, Node: j.NodeName, EVE: a.cfg.eveRoot(), Log: log,
		StateFile:  layout.State{Dir: a.cfg.StateDir}.UpgradeState(),
		BootMarker: filepath.Join(a.cfg.RunDir, "upgrade-boot")}
	// DrainStatus opens zedkube's socket only on a build known not to be
	// EVE-k; there zedkube owns it, and evelet still drains its own node
	// before EVE reboots.
	pub, err := socketpub.OpenDrainStatus(a.cfg.eveRoot(), socketpub.Options{Log: log})
	if err != nil {
		log.WithError(err).Error("NodeDrainStatus cannot be published; the node is still drained before EVE reboots")
	} else {
		defer pub.Close()
		cfg.Publisher = pub
	}
	c := upgrade.New(cfg)
	a.mu.Lock()
	a.upgrader = c
	items := a.items
	a.mu.Unlock()
	c.SetConfigItems(items)
	if err := c.Run(ctx); err != nil {
		log.WithError(err).Error("upgrade coordinator stopped")
	}
	a.mu.Lock()
	a.upgrader = nil
	a.mu.Unlock()
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
