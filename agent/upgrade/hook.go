package upgrade

import (
	"context"
	"time"

	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/eve/pubsub/socketpub"
	"github.com/sirupsen/logrus"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// credentialsCheckEvery is how often the hook looks for the node's own
// credentials (the kubelet writes them once its CSR is approved).
const credentialsCheckEvery = 2 * time.Second

// Hook is how the agent runs the coordinator for its joined node.
type Hook struct {
	Node string
	EVE  pubsub.Root
	// StateFile and BootMarker: see Config.
	StateFile, BootMarker string
	// HaveCredentials reports whether the node's own client credentials
	// exist; Client builds a client with them.
	HaveCredentials func() bool
	Client          func() (kubernetes.Interface, error)
	// Items are the owner's config items at start; Started receives the
	// coordinator so later changes reach it (SetConfigItems), and Stopped
	// when it is gone.
	Items   map[string]string
	Started func(*Coordinator)
	Stopped func()
	Log     *logrus.Entry
}

// Run waits for the node's credentials (the coordinator acts with the
// node's own identity, which exists only after the kubelet's TLS
// bootstrap), then runs the coordinator until ctx ends. NodeDrainStatus
// goes through socketpub.DrainStatus, which opens zedkube's socket only on
// a build known not to be EVE-k.
func (h *Hook) Run(ctx context.Context) {
	err := wait.PollUntilContextCancel(ctx, credentialsCheckEvery, true, func(context.Context) (bool, error) {
		return h.HaveCredentials(), nil
	})
	if err != nil {
		return
	}
	cs, err := h.Client()
	if err != nil {
		h.Log.WithError(err).Error("no node client; OS updates are not coordinated")
		return
	}
	cfg := Config{Client: cs, Node: h.Node, EVE: h.EVE, Log: h.Log, StateFile: h.StateFile, BootMarker: h.BootMarker}
	pub, err := socketpub.OpenDrainStatus(h.EVE, socketpub.Options{Log: h.Log})
	if err != nil {
		h.Log.WithError(err).Error("NodeDrainStatus cannot be published; the node is still drained before EVE reboots")
	} else {
		defer pub.Close()
		cfg.Publisher = pub
	}
	c := New(cfg)
	c.SetConfigItems(h.Items)
	if h.Started != nil {
		h.Started(c)
	}
	if err := c.Run(ctx); err != nil {
		h.Log.WithError(err).Error("upgrade coordinator stopped")
	}
	if h.Stopped != nil {
		h.Stopped()
	}
}
