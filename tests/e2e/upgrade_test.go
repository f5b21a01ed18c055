package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/agent/upgrade"
	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/eve/pubsub/socketpub"
	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/internal/nodelabels"
	"github.com/lf-edge/evelet/tests/evesim"
	"github.com/lf-edge/evelet/tests/internal/socketsub"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

const upgradeTarget = "16.13.0-kvm-amd64"

// upgradeItems make the drain quick to fail in tests: 2 attempts of 20 s,
// 3 s apart, evictions refused by a PDB asked again every second.
var upgradeItems = map[string]string{
	upgrade.KeyDrainTimeout: "20s", upgrade.KeyDrainAttempts: "2",
	upgrade.KeyDrainRetryInterval: "3s", upgrade.KeyEvictionRetry: "1s",
}

// drainSub follows NodeDrainStatus on the socket EVE's subscribers use.
type drainSub struct {
	t testing.TB
	s *socketsub.Sub
}

// startUpgradeDevice joins a simulated EVE device named name (also its node
// name) with the upgrade items; kube says whether the build asks for drains
// (NodeAgentStatus.HVTypeKube). It returns once the node is Ready and the
// agent publishes NotRequested.
func startUpgradeDevice(t testing.TB, name string, kube bool) (*device, *evesim.Device, *drainSub) {
	t.Helper()
	d, sim := newSimDevice(t, name)
	deleteNodeAtEnd(t, name)
	c := simCluster(t, env.cp, "prod", "11111111-2222-4333-8444-555555555555")
	for k, v := range upgradeItems {
		c.ConfigItems[k] = v
	}
	if err := sim.SetCluster(c); err != nil {
		t.Fatal(err)
	}
	if err := sim.SetNodeAgent(kube, false); err != nil {
		t.Fatal(err)
	}
	d.start()
	waitNodeReady(t, name, 3*time.Minute)
	ds := followDrainStatus(t, sim.Root)
	ds.wait(2*time.Minute, pubsub.DrainStatusNotRequested, 0)
	return d, sim, ds
}

func followDrainStatus(t testing.TB, root pubsub.Root) *drainSub {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return &drainSub{t: t, s: socketsub.Follow(ctx, socketpub.SocketPath(root, pubsub.AgentZedKube, pubsub.TopicNodeDrainStatus), pubsub.TopicNodeDrainStatus)}
}

func decodeDrain(v string) (pubsub.NodeDrainStatus, bool) {
	var s pubsub.NodeDrainStatus
	if v == "" || json.Unmarshal([]byte(v), &s) != nil {
		return s, false
	}
	return s, true
}

// wait waits for status (and requester, unless 0) on the socket.
func (d *drainSub) wait(timeout time.Duration, status pubsub.DrainStatus, by pubsub.DrainRequester) pubsub.NodeDrainStatus {
	d.t.Helper()
	var got pubsub.NodeDrainStatus
	err := d.s.Wait(testCtx(d.t, timeout), pubsub.KeyGlobal, func(v string) bool {
		s, ok := decodeDrain(v)
		got = s
		return ok && s.Status == status && (by == 0 || s.RequestedBy == by)
	})
	if err != nil {
		d.t.Fatalf("NodeDrainStatus %v: %v", status, err)
	}
	return got
}

// statuses is the sequence seen so far.
func (d *drainSub) statuses() []pubsub.DrainStatus {
	var out []pubsub.DrainStatus
	for _, v := range d.s.History() {
		if s, ok := decodeDrain(v); ok {
			out = append(out, s.Status)
		}
	}
	return out
}

// since returns the statuses after the last occurrence of from.
func statusesAfter(all []pubsub.DrainStatus, from pubsub.DrainStatus) []pubsub.DrainStatus {
	for i := len(all) - 1; i >= 0; i-- {
		if all[i] == from {
			return all[i:]
		}
	}
	return nil
}

func countStatus(all []pubsub.DrainStatus, s pubsub.DrainStatus) int {
	n := 0
	for _, x := range all {
		if x == s {
			n++
		}
	}
	return n
}

func inOrder(got, want []pubsub.DrainStatus) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

func nodeCondition(n *corev1.Node) *corev1.NodeCondition {
	for _, c := range n.Status.Conditions {
		if c.Type == upgrade.ConditionType {
			return &c
		}
	}
	return nil
}

func getNode(t *testing.T, name string) *corev1.Node {
	t.Helper()
	n, err := env.cp.Client().CoreV1().Nodes().Get(testCtx(t, 10*time.Second), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// waitCondition waits for the EVEOSUpdate condition with reason.
func waitCondition(t *testing.T, node, reason string, timeout time.Duration) *corev1.Node {
	t.Helper()
	var n *corev1.Node
	waitFor(t, timeout, "condition "+string(upgrade.ConditionType)+"="+reason, func() (bool, error) {
		var err error
		n, err = env.cp.Client().CoreV1().Nodes().Get(testCtx(t, 10*time.Second), node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		c := nodeCondition(n)
		return c != nil && c.Reason == reason, fmt.Errorf("condition %+v", c)
	})
	return n
}

// nodeEvents returns reason -> messages of the Events on the Node.
func nodeEvents(t *testing.T, node string) map[string][]string {
	t.Helper()
	l, err := env.cp.Client().CoreV1().Events("").List(testCtx(t, 10*time.Second), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, e := range l.Items {
		if e.InvolvedObject.Kind == "Node" && e.InvolvedObject.Name == node {
			out[e.Reason] = append(out[e.Reason], e.Message)
		}
	}
	return out
}

func waitEvent(t *testing.T, node, reason, contains string) {
	t.Helper()
	waitFor(t, 30*time.Second, "event "+reason, func() (bool, error) {
		for _, m := range nodeEvents(t, node)[reason] {
			if strings.Contains(m, contains) {
				return true, nil
			}
		}
		return false, fmt.Errorf("events %v", nodeEvents(t, node))
	})
}

// podsOn lists the pods bound to node with the label app=app ("" any)
// that have not ended: an evicted pod whose containers stopped is Failed
// (the kubelet's terminal phase) until the kubelet removes the object.
func podsOn(t *testing.T, node, app string) []corev1.Pod { return podsOnTB(t, node, app) }

func podsOnTB(t testing.TB, node, app string) []corev1.Pod {
	t.Helper()
	opts := metav1.ListOptions{FieldSelector: "spec.nodeName=" + node}
	if app != "" {
		opts.LabelSelector = "app=" + app
	}
	l, err := env.cp.Client().CoreV1().Pods("").List(testCtx(t, 10*time.Second), opts)
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range l.Items {
		if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			out = append(out, p)
		}
	}
	return out
}

// rebootSim is the device rebooting: the agent (and its kubelet) stop,
// EVE's /run and evelet's run root are emptied, the device boots version,
// EVE's agents publish again, the agent starts.
func rebootSim(t *testing.T, d *device, sim *evesim.Device, version string, kube bool) {
	t.Helper()
	d.stop()
	if err := sim.Reboot(evesim.Options{OSVersion: version}); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(d.runDir()); err != nil {
		t.Fatal(err)
	}
	if err := sim.PublishZedagent(); err != nil {
		t.Fatal(err)
	}
	if err := sim.SetNodeAgent(kube, false); err != nil {
		t.Fatal(err)
	}
	d.start()
}

// adminCordon is `kubectl cordon` / `uncordon` by the cluster admin.
func adminCordon(t *testing.T, node string, on bool) {
	t.Helper()
	patch := fmt.Sprintf(`{"spec":{"unschedulable":%t}}`, on)
	if _, err := env.cp.Client().CoreV1().Nodes().Patch(testCtx(t, 10*time.Second), node, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func daemonSet(name string) *appsv1.DaemonSet {
	labels := map[string]string{"app": name}
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To[int64](2),
					Containers: []corev1.Container{{
						Name: "main", Image: images.BusyboxRef, ImagePullPolicy: corev1.PullNever,
						Command: []string{"sh", "-c", "exec sleep 3600"},
					}},
				},
			},
		},
	}
}

// TestOSUpdateOneDevice drives one device through EVE's update and reboot
// flows, EVE-k style (NodeAgentStatus.HVTypeKube: EVE asks for the drain
// and waits for NodeDrainStatus), against the real control plane:
//  1. OS update: baseosmgr asks; NodeDrainStatus (read from the socket)
//     goes Requested, Starting, Cordoned, Complete; the Deployment's pods
//     are evicted, the DaemonSet pod stays; the node is cordoned and
//     marked; a second request while draining changes nothing; after the
//     reboot into the new version the node is Ready, uncordoned, labelled
//     with the new version, with an OSUpdated event.
//  2. Reboot without an OS change, with an admin's cordon: Rebooted, and
//     the admin's cordon stays.
//  3. A PDB that can never be satisfied: DrainRetrying, FailedDrain within
//     the configured attempts; EVE withdraws -> uncordoned.
//  4. kill -9 of the agent mid-drain: the next agent resumes the cycle.
//  5. Fallback: the reboot comes back on the old version -> OSUpdateFailed.
func TestOSUpdateOneDevice(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 20*time.Minute)
	cs := env.cp.Client()
	d, sim, ds := startUpgradeDevice(t, "edge-upgrade", true)
	node := "edge-upgrade"

	dep := busyboxDeployment("upg", node, "exec sleep 3600")
	dep.Spec.Replicas = ptr.To[int32](2)
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.AppsV1().Deployments("default").Delete(context.Background(), "upg", metav1.DeleteOptions{}) })
	dset := daemonSet("upg-ds")
	if _, err := cs.AppsV1().DaemonSets("default").Create(ctx, dset, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.AppsV1().DaemonSets("default").Delete(context.Background(), "upg-ds", metav1.DeleteOptions{})
	})
	waitFor(t, 3*time.Minute, "2 Deployment pods and the DaemonSet pod Running", func() (bool, error) {
		run := map[string]int{}
		for _, p := range podsOn(t, node, "") {
			if p.Status.Phase == corev1.PodRunning {
				run[p.Labels["app"]]++
			}
		}
		return run["upg"] == 2 && run["upg-ds"] == 1, fmt.Errorf("running %v", run)
	})
	dsPod := podsOn(t, node, "upg-ds")[0]

	// 1. OS update asked by baseosmgr.
	ct, err := sim.ActivateBaseOs(upgradeTarget, 0)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if _, err := sim.RequestDrain(pubsub.DrainRequesterUpdate, ct); err != nil {
		t.Fatal(err)
	}
	ds.wait(2*time.Minute, pubsub.DrainStatusCordoned, pubsub.DrainRequesterUpdate)
	// A second request while the drain runs (baseosmgr re-publishes): the
	// same cycle goes on.
	if _, err := sim.RequestDrain(pubsub.DrainRequesterUpdate, ct); err != nil {
		t.Fatal(err)
	}
	ds.wait(2*time.Minute, pubsub.DrainStatusComplete, pubsub.DrainRequesterUpdate)
	t.Logf("request -> Complete in %v", time.Since(t0).Round(time.Millisecond))
	seq := statusesAfter(ds.statuses(), pubsub.DrainStatusRequested)
	want := []pubsub.DrainStatus{pubsub.DrainStatusRequested, pubsub.DrainStatusStarting, pubsub.DrainStatusCordoned, pubsub.DrainStatusComplete}
	if !inOrder(seq, want) {
		t.Errorf("NodeDrainStatus sequence %v, want %v in order", ds.statuses(), want)
	}
	if n := countStatus(ds.statuses(), pubsub.DrainStatusRequested); n != 1 {
		t.Errorf("the second request restarted the cycle: %v", ds.statuses())
	}
	n := getNode(t, node)
	if !n.Spec.Unschedulable || n.Annotations[upgrade.AnnotationPendingVersion] != upgradeTarget ||
		!strings.Contains(n.Annotations[upgrade.AnnotationRequestedBy], "baseosmgr") {
		t.Errorf("node not cordoned and marked: unschedulable %v annotations %v", n.Spec.Unschedulable, n.Annotations)
	}
	if c := nodeCondition(n); c == nil || c.Status != corev1.ConditionTrue || c.Reason != upgrade.ReasonDrained {
		t.Errorf("condition %+v, want True/Drained", c)
	}
	if left := podsOn(t, node, "upg"); len(left) != 0 {
		t.Errorf("Deployment pods still on the node after Complete: %d", len(left))
	}
	if p := podsOn(t, node, "upg-ds"); len(p) != 1 || p[0].UID != dsPod.UID {
		t.Errorf("DaemonSet pod not left in place: %v", p)
	}
	waitEvent(t, node, upgrade.ReasonRequested, upgradeTarget)
	waitEvent(t, node, upgrade.ReasonDrained, "")

	rebootSim(t, d, sim, upgradeTarget, true)
	n = waitCondition(t, node, upgrade.ReasonOSUpdated, 3*time.Minute)
	if !isReady(n) || n.Spec.Unschedulable || n.Labels[nodelabels.OSVersion] != nodelabels.SanitizeValue(upgradeTarget) {
		t.Errorf("after the update: ready %v unschedulable %v label %q", isReady(n), n.Spec.Unschedulable, n.Labels[nodelabels.OSVersion])
	}
	if _, ok := n.Annotations[upgrade.AnnotationPendingVersion]; ok {
		t.Errorf("pending annotation left: %v", n.Annotations)
	}
	waitEvent(t, node, upgrade.ReasonOSUpdated, upgradeTarget)
	ds.wait(time.Minute, pubsub.DrainStatusNotRequested, 0)
	waitFor(t, 3*time.Minute, "Deployment pods back on the uncordoned node", func() (bool, error) {
		p := podsOn(t, node, "upg")
		return len(p) == 2, fmt.Errorf("%d pods", len(p))
	})

	// 2. A reboot without an OS change, with an admin's cordon.
	adminCordon(t, node, true)
	if _, err := sim.RequestDrain(pubsub.DrainRequesterDeviceOp, "reboot"); err != nil {
		t.Fatal(err)
	}
	ds.wait(2*time.Minute, pubsub.DrainStatusComplete, pubsub.DrainRequesterDeviceOp)
	rebootSim(t, d, sim, upgradeTarget, true)
	n = waitCondition(t, node, upgrade.ReasonRebooted, 3*time.Minute)
	if !n.Spec.Unschedulable {
		t.Error("the admin's cordon did not survive the reboot cycle")
	}
	waitEvent(t, node, upgrade.ReasonRebooted, "stays")
	adminCordon(t, node, false)

	// 3. A PDB that can never be satisfied.
	pdb := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "upg", Namespace: "default"},
		Spec: policyv1.PodDisruptionBudgetSpec{MinAvailable: &intstr.IntOrString{Type: intstr.Int, IntVal: 2},
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "upg"}}},
	}
	if _, err := cs.PolicyV1().PodDisruptionBudgets("default").Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.PolicyV1().PodDisruptionBudgets("default").Delete(context.Background(), "upg", metav1.DeleteOptions{})
	})
	waitFor(t, 3*time.Minute, "2 Deployment pods Running and the PDB allowing none", func() (bool, error) {
		p, err := cs.PolicyV1().PodDisruptionBudgets("default").Get(ctx, "upg", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return p.Status.ObservedGeneration == p.Generation && p.Status.CurrentHealthy == 2 && p.Status.DisruptionsAllowed == 0, fmt.Errorf("%+v", p.Status)
	})
	t0 = time.Now()
	if _, err := sim.RequestDrain(pubsub.DrainRequesterDeviceOp, "reboot"); err != nil {
		t.Fatal(err)
	}
	ds.wait(2*time.Minute, pubsub.DrainStatusDrainRetrying, pubsub.DrainRequesterDeviceOp)
	ds.wait(2*time.Minute, pubsub.DrainStatusFailedDrain, pubsub.DrainRequesterDeviceOp)
	took := time.Since(t0)
	t.Logf("FailedDrain after %v (2 attempts of 20s, 3s apart)", took.Round(time.Millisecond))
	if took > 80*time.Second {
		t.Errorf("FailedDrain after %v, configured 2x20s+3s", took)
	}
	n = waitCondition(t, node, upgrade.ReasonDrainFailed, 30*time.Second)
	if !n.Spec.Unschedulable || !strings.Contains(nodeCondition(n).Message, "default/upg-") {
		t.Errorf("after FailedDrain: unschedulable %v condition %+v", n.Spec.Unschedulable, nodeCondition(n))
	}
	if len(podsOn(t, node, "upg")) != 2 {
		t.Errorf("the PDB was not respected: %d pods left", len(podsOn(t, node, "upg")))
	}
	// EVE withdraws its request (as zedagent does on FailedDrain).
	if err := sim.WithdrawDrain(pubsub.DrainRequesterDeviceOp); err != nil {
		t.Fatal(err)
	}
	n = waitCondition(t, node, upgrade.ReasonWithdrawn, time.Minute)
	if n.Spec.Unschedulable {
		t.Error("node still cordoned after EVE withdrew")
	}

	// 4. kill -9 of the agent in the middle of a drain (the PDB holds it).
	if _, err := sim.RequestDrain(pubsub.DrainRequesterDeviceOp, "reboot"); err != nil {
		t.Fatal(err)
	}
	ds.wait(2*time.Minute, pubsub.DrainStatusCordoned, pubsub.DrainRequesterDeviceOp)
	d.kill9()
	if !getNode(t, node).Spec.Unschedulable {
		t.Error("not cordoned mid-drain")
	}
	if err := cs.PolicyV1().PodDisruptionBudgets("default").Delete(ctx, "upg", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	d.start()
	ds.wait(3*time.Minute, pubsub.DrainStatusComplete, pubsub.DrainRequesterDeviceOp)
	if !strings.Contains(d.log(), "resuming the cycle") {
		t.Error("the restarted agent did not say it resumed the cycle")
	}
	if left := podsOn(t, node, "upg"); len(left) != 0 {
		t.Errorf("%d Deployment pods left after the resumed drain", len(left))
	}
	// EVE withdraws instead of rebooting: evelet still knows it cordoned.
	if err := sim.WithdrawDrain(pubsub.DrainRequesterDeviceOp); err != nil {
		t.Fatal(err)
	}
	n = waitCondition(t, node, upgrade.ReasonWithdrawn, time.Minute)
	if n.Spec.Unschedulable {
		t.Error("node still cordoned after the resumed cycle was withdrawn")
	}

	// 5. Fallback: an update whose reboot comes back on the old version.
	ct, err = sim.ActivateBaseOs("16.14.0-kvm-amd64", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sim.RequestDrain(pubsub.DrainRequesterUpdate, ct); err != nil {
		t.Fatal(err)
	}
	ds.wait(2*time.Minute, pubsub.DrainStatusComplete, pubsub.DrainRequesterUpdate)
	rebootSim(t, d, sim, upgradeTarget, true)
	n = waitCondition(t, node, upgrade.ReasonOSUpdateFailed, 3*time.Minute)
	if n.Spec.Unschedulable || n.Labels[nodelabels.OSVersion] != nodelabels.SanitizeValue(upgradeTarget) {
		t.Errorf("after the fallback: unschedulable %v label %q", n.Spec.Unschedulable, n.Labels[nodelabels.OSVersion])
	}
	waitEvent(t, node, upgrade.ReasonOSUpdateFailed, "fallback")
}

// TestOSUpdateEarlyDetection: on a build that does not ask (no zedkube,
// NodeAgentStatus.HVTypeKube false), BaseOsConfig activating another
// version starts the drain at once; the reboot into it ends OSUpdated.
func TestOSUpdateEarlyDetection(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 10*time.Minute)
	cs := env.cp.Client()
	d, sim, ds := startUpgradeDevice(t, "edge-upgrade-early", false)
	node := "edge-upgrade-early"
	dep := busyboxDeployment("upg-early", node, "exec sleep 3600")
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.AppsV1().Deployments("default").Delete(context.Background(), "upg-early", metav1.DeleteOptions{})
	})
	runningPod(t, "upg-early", 3*time.Minute)

	t0 := time.Now()
	if _, err := sim.ActivateBaseOs(upgradeTarget, 0); err != nil {
		t.Fatal(err)
	}
	ds.wait(2*time.Minute, pubsub.DrainStatusComplete, pubsub.DrainRequesterUpdate)
	t.Logf("BaseOsConfig -> Complete in %v", time.Since(t0).Round(time.Millisecond))
	n := getNode(t, node)
	if !n.Spec.Unschedulable || !strings.Contains(n.Annotations[upgrade.AnnotationRequestedBy], "BaseOsConfig") {
		t.Errorf("unschedulable %v annotations %v", n.Spec.Unschedulable, n.Annotations)
	}
	if len(podsOn(t, node, "upg-early")) != 0 {
		t.Error("pod not evicted")
	}
	if err := sim.SetPartitionUpdating(upgradeTarget); err != nil { // baseosmgr wrote the image: same cycle
		t.Fatal(err)
	}
	rebootSim(t, d, sim, upgradeTarget, false)
	if _, err := sim.ActivateBaseOs(upgradeTarget, 0); err != nil { // zedagent publishes it again after the boot
		t.Fatal(err)
	}
	n = waitCondition(t, node, upgrade.ReasonOSUpdated, 3*time.Minute)
	if n.Spec.Unschedulable || n.Labels[nodelabels.OSVersion] != nodelabels.SanitizeValue(upgradeTarget) {
		t.Errorf("unschedulable %v label %q", n.Spec.Unschedulable, n.Labels[nodelabels.OSVersion])
	}
	if countStatus(ds.statuses(), pubsub.DrainStatusRequested) != 1 {
		t.Errorf("more than one cycle: %v", ds.statuses())
	}
}
