// Package drain cordons and drains the device's own Node with the node's
// own credentials, through the Eviction API so PodDisruptionBudgets hold.
//
// kubectl's drain helper (k8s.io/kubectl/pkg/drain) is not used because it
// GETs each DaemonSet to classify pods, which the node authorizer does not
// grant to a node identity; here DaemonSet pods are recognised by their
// owner reference alone, which needs no extra permission.
package drain

import (
	"context"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// Drainer drains one node.
type Drainer struct {
	Client kubernetes.Interface
	Node   string
	Log    *logrus.Entry
	// Timeout bounds Drain; pods still there afterwards are reported.
	Timeout time.Duration
	// RetryInterval is the pause between evictions refused by a PDB (429).
	RetryInterval time.Duration
	// PollInterval is how often the node's pods are listed again while
	// evicted pods terminate and none is refused (default 250ms).
	PollInterval time.Duration
}

// Cordon marks the node unschedulable (or schedulable again).
func (d *Drainer) Cordon(ctx context.Context, unschedulable bool) error {
	patch := fmt.Sprintf(`{"spec":{"unschedulable":%t}}`, unschedulable)
	_, err := d.Client.CoreV1().Nodes().Patch(ctx, d.Node, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("cordon %s: %w", d.Node, err)
	}
	return nil
}

// Drain evicts every evictable pod on the node and waits until they are
// gone. Mirror pods and DaemonSet pods are left, as `kubectl drain
// --ignore-daemonsets` does: the DaemonSet controller would recreate them.
func (d *Drainer) Drain(ctx context.Context) error {
	timeout := d.Timeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	retry := d.RetryInterval
	if retry == 0 {
		retry = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		pods, err := d.evictable(ctx)
		if err != nil {
			return err
		}
		if len(pods) == 0 {
			return nil
		}
		var blocked []string
		for _, p := range pods {
			if p.DeletionTimestamp != nil {
				continue // already going
			}
			err := d.Client.PolicyV1().Evictions(p.Namespace).Evict(ctx, &policyv1.Eviction{
				ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace},
			})
			switch {
			case err == nil:
				d.Log.WithField("pod", p.Namespace+"/"+p.Name).Info("evicted")
			case apierrors.IsNotFound(err):
			case apierrors.IsTooManyRequests(err):
				// A PodDisruptionBudget says not now; try again later.
				blocked = append(blocked, p.Namespace+"/"+p.Name)
			default:
				return fmt.Errorf("evict %s/%s: %w", p.Namespace, p.Name, err)
			}
		}
		wait := d.PollInterval
		if wait == 0 {
			wait = 250 * time.Millisecond
		}
		if len(blocked) > 0 {
			d.Log.WithField("pods", blocked).Info("eviction blocked by a PodDisruptionBudget; retrying")
			wait = retry
		}
		select {
		case <-ctx.Done():
			left := make([]string, 0, len(pods))
			for _, p := range pods {
				left = append(left, p.Namespace+"/"+p.Name)
			}
			return fmt.Errorf("drain of %s incomplete after %v; pods left: %v", d.Node, timeout, left)
		case <-time.After(wait):
		}
	}
}

func (d *Drainer) evictable(ctx context.Context) ([]corev1.Pod, error) {
	l, err := d.Client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", d.Node).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("list pods on %s: %w", d.Node, err)
	}
	var out []corev1.Pod
	for _, p := range l.Items {
		if _, mirror := p.Annotations[corev1.MirrorPodAnnotationKey]; mirror {
			continue
		}
		if ref := metav1.GetControllerOf(&p); ref != nil && ref.Kind == "DaemonSet" {
			continue
		}
		// A finished pod that nobody deletes (a completed Job's) needs no
		// eviction; one being deleted (an evicted pod the kubelet moved to
		// its terminal phase) counts until the kubelet has cleaned it up
		// and removed it, as kubectl drain waits for deletion.
		if (p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed) && p.DeletionTimestamp == nil {
			continue
		}
		out = append(out, p)
	}
	return out, nil
}
