package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"

	"github.com/lf-edge/evelet/bootstrap"

	"github.com/lf-edge/evelet/bootstrap/intent"

	"github.com/lf-edge/evelet/agent/drain"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// mustLeave reports whether the device holds credentials for a cluster
// that next (nil: no cluster) is not. The cluster is its apiserver and its
// CA (bootstrap.Store.Holds): a cluster rebuilt at the same address is
// another cluster. When the record cannot be read the answer is "stay": a
// damaged file must not drain a node the owner did not ask to move; the
// next Prepare rewrites the credentials anyway.
func (a *Agent) mustLeave(next *intent.Join) bool {
	rec, err := a.store.Record()
	if err == nil && rec == nil {
		return false
	}
	if next == nil {
		return true
	}
	if err != nil {
		a.log.WithError(err).Warn("join record unreadable; not leaving on its account")
		return false
	}
	held, err := a.store.Holds(&next.Material)
	if err != nil {
		a.log.WithError(err).Warn("cannot tell whether the stored credentials are for this cluster; not leaving on that account")
		return false
	}
	return !held
}

// leave cordons and drains the node with its own credentials, deletes the
// Node object, stops the kubelet (stopKubelet) and wipes the credentials.
// A cluster that cannot be reached does not keep the device hostage: the
// drain error is reported and the device leaves anyway, because the owner
// asked it to. An unreadable join record leaves too, with what the status
// still knows.
func (a *Agent) leave(ctx context.Context, stopKubelet func()) {
	store := a.store
	rec, recErr := store.Record()
	if rec == nil {
		rec = &bootstrap.JoinRecord{}
	}
	node, server := rec.NodeName, rec.APIServer
	if st := a.Status(); node == "" || server == "" {
		node, server = cmp.Or(node, st.NodeName), cmp.Or(server, st.APIServer)
	}
	log := a.log.WithFields(map[string]any{"node": node, "apiserver": server})
	var errs []error
	if recErr != nil {
		errs = append(errs, fmt.Errorf("join record: %w", recErr))
	}
	a.publish(func(s *Status) { s.Phase = PhaseLeaving })
	if node == "" {
		errs = append(errs, errors.New("node name unknown; skipped drain"))
	} else if cs, err := nodeClient(store.KubeconfigPath()); err != nil {
		errs = append(errs, err)
	} else {
		d := &drain.Drainer{Client: cs, Node: node, Log: log, Timeout: a.cfg.DrainTimeout}
		if err := d.Cordon(ctx, true); err != nil {
			errs = append(errs, err)
		} else if err := d.Drain(ctx); err != nil {
			errs = append(errs, err)
		}
		// Stop the kubelet before deleting the Node, or it re-registers it.
		stopKubelet()
		err := cs.CoreV1().Nodes().Delete(ctx, node, metav1.DeleteOptions{})
		switch {
		case err == nil, apierrors.IsNotFound(err):
		case apierrors.IsForbidden(err):
			// The node authorizer does not let a node delete itself unless
			// the cluster grants it; a cordoned node without a kubelet goes
			// NotReady, which is the documented outcome.
			log.Info("cluster does not allow the node to delete its Node object; left it cordoned")
		default:
			errs = append(errs, fmt.Errorf("delete node %s: %w", node, err))
		}
	}
	stopKubelet()
	if err := a.removeServiceRules(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := a.removePodNetwork(ctx); err != nil {
		errs = append(errs, err)
	}
	a.forgetUpgrade()
	// eve-ni's anti-spoofing table goes with the node once no pod is
	// attached; with the kubelet stopped no ADD races the removal.
	if err := a.removeNodeRules(); err != nil {
		errs = append(errs, fmt.Errorf("eve-ni nftables table: %w", err))
	}
	if err := a.removeNodeDNS(); err != nil {
		errs = append(errs, fmt.Errorf("node-local DNS interface: %w", err))
	}
	if err := store.Wipe(); err != nil {
		errs = append(errs, fmt.Errorf("wipe credentials: %w", err))
	}
	if err := a.removeNetworkCredential(); err != nil {
		errs = append(errs, fmt.Errorf("wipe evelet-network credential: %w", err))
	}
	err := errors.Join(errs...)
	if err != nil {
		log.WithError(err).Warn("left the cluster with errors")
	} else {
		log.Info("left the cluster")
	}
	a.publish(func(s *Status) {
		*s = Status{Phase: PhaseLeft, Source: s.Source, AgentPID: s.AgentPID, ConfigErrors: s.ConfigErrors, NodeName: s.NodeName, APIServer: s.APIServer}
		if err != nil {
			s.LastError, s.LastErrorTime = err.Error(), ptrNow()
		}
	})
}

func nodeClient(kubeconfig string) (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("node credentials: %w", err)
	}
	return kubernetes.NewForConfig(cfg)
}
