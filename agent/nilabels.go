package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/lf-edge/evelet/cni/eveni"
	"github.com/lf-edge/evelet/cni/eveni/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// runNILabels runs the node's NI label loop (cni/eveni/labels) with the
// owner's grants, the joined node's name and the kubelet's credentials:
// NodeRestriction lets a node change its own labels outside the
// kubernetes.io/k8s.io namespaces, which these are.
func (a *Agent) runNILabels(ctx context.Context) {
	l := &labels.Loop{
		EVE:    a.cfg.eveRoot(),
		Grants: func() []eveni.Grant { return niGrants(a.policy()) },
		Node:   func() string { return a.Status().NodeName },
		Client: a.kubeletClient,
		Kick:   a.niKick,
		Log:    a.log.WithField("component", "ni-labels"),
	}
	l.Run(ctx)
}

// kubeletClient acts with the kubelet's client certificate.
func (a *Agent) kubeletClient() (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", a.store.KubeconfigPath())
	if err != nil {
		return nil, fmt.Errorf("kubelet credentials: %w", err)
	}
	cfg.Timeout = 15 * time.Second
	return kubernetes.NewForConfig(cfg)
}
