package agent

import (
	"context"
	"time"

	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/dra"
	"github.com/lf-edge/evelet/internal/layout"
	"github.com/sirupsen/logrus"
	"k8s.io/apimachinery/pkg/util/wait"
)

// DRAConfig tunes the DRA driver (dra/): the EVE adapters the owner gives
// to Kubernetes (evelet.policy.devices), offered through Dynamic Resource
// Allocation.
type DRAConfig struct {
	// Disabled keeps the driver off whatever the owner assigns.
	Disabled bool
	// Sysfs is /sys ("" means /sys); tests point it at a fake tree.
	Sysfs string
}

// cdiDir is where the driver writes prepared claims and the CRI shim
// reads them.
func (c *Config) cdiDir() string { return layout.State{Dir: c.StateDir}.CDI() }

// startDRA runs the node's DRA driver for j until ctx ends, from the first
// moment the owner assigns a device (off while nothing is); once started it
// keeps running, so a later withdrawal still evicts and shrinks the slice.
// It acts with the kubelet's credentials (dra package doc): it starts once
// the kubelet's kubeconfig exists. The returned func waits for it.
func (a *Agent) startDRA(ctx context.Context, j *intent.Join) (wait func()) {
	if a.cfg.DRA.Disabled {
		return func() {}
	}
	log := a.log.WithFields(logrus.Fields{"node": j.NodeName, "component": "dra"})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if !a.waitForAssignedDevices(ctx) || waitForFile(ctx, a.store.KubeconfigPath()) != nil {
			return
		}
		client, err := a.kubeletClient()
		if err != nil {
			log.WithError(err).Error("DRA driver not started: no devices for Kubernetes")
			return
		}
		d := dra.New(dra.Config{
			NodeName: j.NodeName, Client: client,
			KubeletRootDir: layout.State{Dir: a.cfg.StateDir}.KubeletRoot(),
			CDIDir:         a.cfg.cdiDir(),
			EVE:            a.cfg.eveRoot(), Sysfs: a.cfg.DRA.Sysfs,
			Assigned: func() []string { return a.policy().AssignedDevices },
			Log:      log,
		})
		if err := d.Run(ctx); err != nil {
			log.WithError(err).Error("DRA driver stopped: no devices for Kubernetes")
		}
	}()
	return func() { <-done }
}

// waitForAssignedDevices waits until the owner's evelet.policy.devices
// names a device; false when ctx ends first.
func (a *Agent) waitForAssignedDevices(ctx context.Context) bool {
	err := wait.PollUntilContextCancel(ctx, time.Second, true, func(context.Context) (bool, error) {
		return len(a.policy().AssignedDevices) > 0, nil
	})
	return err == nil
}
