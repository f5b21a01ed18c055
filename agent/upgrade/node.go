package upgrade

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"

	"github.com/lf-edge/evelet/internal/nodelabels"
)

// What evelet shows on its Node during a cycle. Everything is written with
// the node's own credentials: NodeRestriction lets a node patch its own
// Node and status, and labels outside kubernetes.io/k8s.io.
const (
	// ConditionType is the Node condition: True while EVE is about to
	// reboot the device (drain requested, running, done or failed), False
	// afterwards with the outcome as its reason.
	ConditionType corev1.NodeConditionType = "EVEOSUpdate"

	// AnnotationPendingVersion is the OS version EVE activates ("" for a
	// reboot without an OS change).
	AnnotationPendingVersion = "node.eve.lf-edge.org/os-update-pending-version"
	// AnnotationRequestedBy says who asked and how evelet noticed.
	AnnotationRequestedBy = "node.eve.lf-edge.org/os-update-requested-by"
	// AnnotationDrainStatus is the NodeDrainStatus evelet reports to EVE.
	AnnotationDrainStatus = "node.eve.lf-edge.org/os-update-drain-status"
	// AnnotationCordonedBy is set while evelet holds the cordon.
	AnnotationCordonedBy = "node.eve.lf-edge.org/cordoned-by"
)

// Condition reasons and Event reasons.
const (
	ReasonRequested      = "EVEOSUpdateRequested" // Event
	ReasonCordonFailed   = "CordonFailed"
	ReasonDraining       = "Draining"
	ReasonDrainRetrying  = "DrainRetrying"
	ReasonDrainFailed    = "DrainFailed"
	ReasonDrained        = "Drained"
	ReasonWithdrawn      = "EVEOSUpdateWithdrawn"
	ReasonWaitingReady   = "WaitingForNodeReady"
	ReasonOSUpdated      = "OSUpdated"
	ReasonOSUpdateFailed = "OSUpdateFailed"
	ReasonRebooted       = "Rebooted"
)

// nodeAPI is the node's own view of the cluster.
type nodeAPI struct {
	c *Coordinator
}

func (n nodeAPI) get(ctx context.Context) (*corev1.Node, error) {
	return n.c.cfg.Client.CoreV1().Nodes().Get(ctx, n.c.cfg.Node, metav1.GetOptions{})
}

// patch sends a strategic merge patch to the Node (or its status).
func (n nodeAPI) patch(ctx context.Context, v any, subresource ...string) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = n.c.cfg.Client.CoreV1().Nodes().Patch(ctx, n.c.cfg.Node, types.StrategicMergePatchType, b, metav1.PatchOptions{}, subresource...)
	if err != nil {
		return fmt.Errorf("patch node %s: %w", n.c.cfg.Node, err)
	}
	return nil
}

// setUnschedulable cordons or uncordons, and records whether evelet holds
// the cordon in an annotation (for the admin; the state file decides).
func (n nodeAPI) setUnschedulable(ctx context.Context, on bool) error {
	var by any // null removes the annotation
	if on {
		by = "evelet (EVE OS update or reboot)"
	}
	return n.patch(ctx, map[string]any{
		"metadata": map[string]any{"annotations": map[string]any{AnnotationCordonedBy: by}},
		"spec":     map[string]any{"unschedulable": on},
	})
}

// mark writes the annotations of a cycle in progress (nil values remove).
func (n nodeAPI) mark(ctx context.Context, st *State) error {
	ann := map[string]any{
		AnnotationPendingVersion: st.ToVersion,
		AnnotationRequestedBy:    st.Trigger + " (" + st.Requester.String() + ")",
		AnnotationDrainStatus:    st.Status.String(),
	}
	if !st.active() {
		ann = map[string]any{AnnotationPendingVersion: nil, AnnotationRequestedBy: nil, AnnotationDrainStatus: nil}
	}
	return n.patch(ctx, map[string]any{"metadata": map[string]any{"annotations": ann}})
}

// condition sets the EVEOSUpdate condition.
func (n nodeAPI) condition(ctx context.Context, status corev1.ConditionStatus, reason, msg string) error {
	now := metav1.NewTime(time.Now())
	cond := corev1.NodeCondition{Type: ConditionType, Status: status, Reason: reason, Message: msg,
		LastHeartbeatTime: now, LastTransitionTime: now}
	node, err := n.get(ctx)
	if err == nil {
		for _, c := range node.Status.Conditions {
			if c.Type == ConditionType && c.Status == status {
				cond.LastTransitionTime = c.LastTransitionTime
			}
		}
	}
	return n.patch(ctx, map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{cond}}}, "status")
}

// setVersionLabel updates the os-version label the kubelet set at
// registration (it does not update it on an existing Node).
func (n nodeAPI) setVersionLabel(ctx context.Context, version string) error {
	return n.patch(ctx, map[string]any{"metadata": map[string]any{"labels": map[string]any{
		nodelabels.OSVersion: nodelabels.SanitizeValue(version)}}})
}

// event records a core/v1 Event on the Node, as the kubelet does (in
// "default", involvedObject UID = node name). Created directly, not through
// client-go's asynchronous recorder: a cycle emits a handful of events and
// they must be there when the state they describe is.
func (n nodeAPI) event(ctx context.Context, typ, reason, msg string) {
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", n.c.cfg.Node, time.Now().UnixNano()) + rand.String(4), Namespace: metav1.NamespaceDefault},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: n.c.cfg.Node, UID: types.UID(n.c.cfg.Node),
			APIVersion: "v1"},
		Reason: reason, Message: msg, Type: typ,
		Source:         corev1.EventSource{Component: "evelet-upgrade", Host: n.c.cfg.Node},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: "evelet.lf-edge.org/upgrade", ReportingInstance: n.c.cfg.Node,
	}
	if _, err := n.c.cfg.Client.CoreV1().Events(metav1.NamespaceDefault).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		n.c.log.WithError(err).WithField("reason", reason).Warn("event not recorded")
	}
}

func isReady(node *corev1.Node, since time.Time) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue && !c.LastHeartbeatTime.Time.Before(since.Truncate(time.Second))
		}
	}
	return false
}
