package devnet

import (
	"context"
	"fmt"
	"time"

	"github.com/lf-edge/evelet/agent"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// pollEvery is how often the wait helpers look.
const pollEvery = 250 * time.Millisecond

// Status reads the status the device's agent last published.
func (d *Device) Status() (*agent.Status, error) { return agent.ReadStatus(d.EveletRunDir()) }

// WaitStatus waits until the agent's published status satisfies ok; the
// error names what was awaited and the last status seen.
func (d *Device) WaitStatus(ctx context.Context, timeout time.Duration, what string, ok func(*agent.Status) bool) (*agent.Status, error) {
	var last *agent.Status
	var lastErr error
	err := wait.PollUntilContextTimeout(ctx, pollEvery, timeout, true, func(context.Context) (bool, error) {
		s, err := d.Status()
		if err != nil {
			lastErr = err
			return false, nil
		}
		last = s
		return ok(s), nil
	})
	if err != nil {
		return last, fmt.Errorf("devnet: %s: waiting for %s: %w (last status %+v, last error %v)", d.nsName, what, err, last, lastErr)
	}
	return last, nil
}

// WaitReady waits until the device's Node is Ready with InternalIP = the
// device's address, and its agent reports Running.
func (d *Device) WaitReady(ctx context.Context, timeout time.Duration) (*corev1.Node, error) {
	return d.waitNode(ctx, timeout, "Ready with InternalIP "+d.IP(), func(n *corev1.Node) bool {
		return IsReady(n) && InternalIP(n) == d.IP()
	})
}

// WaitReadyAfter is WaitReady for a node that must also have proved it is
// back after since (a reboot): its kubelet renewed the node's Lease after
// since. A Node stays Ready for the node-monitor grace period after its
// kubelet died, so Ready alone does not prove it.
func (d *Device) WaitReadyAfter(ctx context.Context, since time.Time, timeout time.Duration) (*corev1.Node, error) {
	deadline := time.Now().Add(timeout)
	if err := d.WaitLeaseRenewedAfter(ctx, since, timeout); err != nil {
		return nil, err
	}
	return d.WaitReady(ctx, max(time.Until(deadline), time.Second))
}

// WaitLeaseRenewedAfter waits until the kubelet renewed the node's Lease
// (kube-node-lease) after since.
func (d *Device) WaitLeaseRenewedAfter(ctx context.Context, since time.Time, timeout time.Duration) error {
	cs := d.o.ControlPlane.Client()
	var last time.Time
	err := wait.PollUntilContextTimeout(ctx, pollEvery, timeout, true, func(ctx context.Context) (bool, error) {
		l, err := cs.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, d.node, metav1.GetOptions{})
		if err != nil || l.Spec.RenewTime == nil {
			return false, nil
		}
		last = l.Spec.RenewTime.Time
		return last.After(since), nil
	})
	if err != nil {
		return fmt.Errorf("devnet: %s: lease of node %s not renewed after %s: %w (last renewal %s)",
			d.nsName, d.node, since.Format(time.RFC3339Nano), err, last.Format(time.RFC3339Nano))
	}
	return nil
}

func (d *Device) waitNode(ctx context.Context, timeout time.Duration, what string, ok func(*corev1.Node) bool) (*corev1.Node, error) {
	cs := d.o.ControlPlane.Client()
	var last *corev1.Node
	var lastErr error
	err := wait.PollUntilContextTimeout(ctx, pollEvery, timeout, true, func(ctx context.Context) (bool, error) {
		n, err := cs.CoreV1().Nodes().Get(ctx, d.node, metav1.GetOptions{})
		if err != nil {
			lastErr = err
			return false, nil
		}
		last = n
		if !ok(n) {
			return false, nil
		}
		s, err := d.Status()
		if err != nil {
			lastErr = err
			return false, nil
		}
		return s.Phase == agent.PhaseRunning, nil
	})
	if err != nil {
		desc := "not found"
		if last != nil {
			desc = fmt.Sprintf("ready=%v addresses=%v", IsReady(last), last.Status.Addresses)
		}
		return nil, fmt.Errorf("devnet: %s: node %s not %s: %w (node %s; last error %v)", d.nsName, d.node, what, err, desc, lastErr)
	}
	return last, nil
}

// IsReady reports the node's Ready condition.
func IsReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// InternalIP is the node's first InternalIP address ("" if none).
func InternalIP(n *corev1.Node) string {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	return ""
}
