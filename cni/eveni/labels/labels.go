// Package labels keeps a Node's network.eve.lf-edge.org/<ni> labels equal
// to the EVE network instances pods may attach to (cni/eveni's rules). It
// is a package of its own so the eve-ni plugin binary does not link
// client-go.
package labels

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/lf-edge/evelet/cni/eveni"
	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/internal/backoff"
	"github.com/sirupsen/logrus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// Resync is how often the node's NI labels are compared with what they
// should be even when nothing changed (a Node deleted and registered again
// has lost them).
const Resync = 30 * time.Second

// Loop keeps one Node's NI labels current.
type Loop struct {
	// EVE is where zedrouter's NetworkInstanceStatus is.
	EVE pubsub.Root
	// Grants are the owner's NIs given to Kubernetes now.
	Grants func() []eveni.Grant
	// Node is the node's name, "" while the device is not joined.
	Node func() string
	// Client acts with the node's own credentials (the kubelet's).
	Client func() (kubernetes.Interface, error)
	// Kick wakes the loop when Grants changed.
	Kick <-chan struct{}
	Log  *logrus.Entry
}

// Run keeps the Node's network.eve.lf-edge.org/<name> labels equal
// to the NIs pods may attach to now (activated, and given to Kubernetes by
// the owner), following zedrouter's NetworkInstanceStatus and the owner's
// config items. It patches the node's own Node with the kubelet's client
// certificate: NodeRestriction lets a node change its own labels outside
// the kubernetes.io/k8s.io namespaces, which these are.
func (l *Loop) Run(ctx context.Context) {
	log := l.Log
	snaps := pubsub.NewWatcher(l.EVE, pubsub.WatchOptions{Log: log}).Watch(ctx)
	var (
		nis     map[string]pubsub.NetworkInstanceStatus
		applied map[string]string // nil: not known to be on the Node
		retry   = backoff.Backoff{Min: time.Second, Max: 10 * time.Second}
		timer   = time.NewTimer(Resync)
	)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case s, ok := <-snaps:
			if !ok {
				return
			}
			nis = s.NetworkInstances
		case <-l.Kick:
		case <-timer.C:
			applied = nil
		}
		want := eveni.NodeLabels(nis, l.Grants())
		if applied != nil && maps.Equal(want, applied) {
			continue
		}
		node := l.Node()
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		if node == "" { // not joined: nothing to label, nothing to back off from
			timer.Reset(2 * time.Second)
			continue
		}
		err := l.sync(ctx, node, want)
		if err != nil {
			applied = nil
			d := retry.Next()
			log.WithError(err).WithField("retry_in", d).Debug("node NI labels not updated")
			timer.Reset(d)
			continue
		}
		retry.Reset()
		if !maps.Equal(want, applied) {
			log.WithField("labels", want).Info("node NI labels updated")
		}
		applied = want
		timer.Reset(Resync)
	}
}

// sync makes the NI labels of node exactly want.
func (l *Loop) sync(ctx context.Context, node string, want map[string]string) error {
	if node == "" {
		return fmt.Errorf("not joined")
	}
	cs, err := l.Client()
	if err != nil {
		return err
	}
	return Sync(ctx, cs, node, want)
}

// Sync sets the network.eve.lf-edge.org/ labels of node to want
// and removes the others of that prefix; other labels are left alone.
func Sync(ctx context.Context, cs kubernetes.Interface, node string, want map[string]string) error {
	n, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	patch := map[string]any{}
	for k := range n.Labels {
		if _, keep := want[k]; strings.HasPrefix(k, eveni.LabelPrefix) && !keep {
			patch[k] = nil
		}
	}
	for k, v := range want {
		if n.Labels[k] != v {
			patch[k] = v
		}
	}
	if len(patch) == 0 {
		return nil
	}
	b, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": patch}})
	if err != nil {
		return err
	}
	_, err = cs.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, b, metav1.PatchOptions{})
	return err
}
