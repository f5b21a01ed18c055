package upgrade

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/internal/nodelabels"
	"github.com/lf-edge/evelet/tests/evesim"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

const (
	node     = "n1"
	newOS    = "16.13.0-kvm-amd64"
	deadline = 20 * time.Second
)

// recorder is EVE's side of NodeDrainStatus: every status in order.
type recorder struct {
	mu  sync.Mutex
	all []pubsub.NodeDrainStatus
}

func (r *recorder) Set(s pubsub.NodeDrainStatus) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.all = append(r.all, s)
	return nil
}

func (r *recorder) statuses() []pubsub.DrainStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]pubsub.DrainStatus, 0, len(r.all))
	for _, s := range r.all {
		out = append(out, s.Status)
	}
	return out
}

func (r *recorder) last() pubsub.NodeDrainStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.all) == 0 {
		return pubsub.NodeDrainStatus{}
	}
	return r.all[len(r.all)-1]
}

// fixture is one device: a fake cluster holding node n1 and its pods, a
// simulated EVE (evesim) and a coordinator that can be stopped and
// started again (agent restart) or rebooted.
type fixture struct {
	t       *testing.T
	cs      *fake.Clientset
	sim     *evesim.Device
	pub     *recorder
	state   string
	runDir  string
	blocked atomic.Bool // evictions refused as by a PDB
	items   map[string]string

	c      *Coordinator
	cancel context.CancelFunc
	done   chan struct{}
}

func newFixture(t *testing.T, pods ...string) *fixture {
	t.Helper()
	dir := t.TempDir()
	sim, err := evesim.New(filepath.Join(dir, "eve"), node)
	if err != nil {
		t.Fatal(err)
	}
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node, Labels: map[string]string{nodelabels.OSVersion: nodelabels.SanitizeValue(sim.OSVersion)}}}
	objs := []runtime.Object{n}
	for _, p := range pods {
		objs = append(objs, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p, Namespace: "default"}, Spec: corev1.PodSpec{NodeName: node},
			Status: corev1.PodStatus{Phase: corev1.PodRunning}})
	}
	f := &fixture{t: t, cs: fake.NewSimpleClientset(objs...), sim: sim, pub: &recorder{},
		state: filepath.Join(dir, "state", "upgrade", "state.json"), runDir: filepath.Join(dir, "run-evelet"),
		items: map[string]string{KeyDrainAttempts: "2", KeyDrainTimeout: "1s", KeyDrainRetryInterval: "100ms", KeyEvictionRetry: "100ms"}}
	// The fake clientset has no eviction semantics: this reactor plays the
	// apiserver (delete the pod, or 429 as a PodDisruptionBudget would).
	f.cs.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		if f.blocked.Load() {
			return true, nil, apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 1)
		}
		ev := a.(k8stesting.CreateAction).GetObject().(*policyv1.Eviction)
		return true, nil, f.cs.Tracker().Delete(schema.GroupVersionResource{Version: "v1", Resource: "pods"}, ev.Namespace, ev.Name)
	})
	f.setReady()
	t.Cleanup(f.stop)
	return f
}

// setReady is the kubelet reporting Ready now.
func (f *fixture) setReady() {
	f.t.Helper()
	ctx := context.Background()
	n, err := f.cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	now := metav1.NewTime(time.Now().Add(time.Second))
	var conds []corev1.NodeCondition
	for _, c := range n.Status.Conditions {
		if c.Type != corev1.NodeReady {
			conds = append(conds, c)
		}
	}
	n.Status.Conditions = append(conds, corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: now, LastTransitionTime: now})
	if _, err := f.cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) start() {
	f.t.Helper()
	f.c = New(Config{Client: f.cs, Node: node, EVE: f.sim.Root, StateFile: f.state, BootMarker: filepath.Join(f.runDir, "upgrade-boot"),
		Publisher: f.pub, Log: logrus.NewEntry(logrus.StandardLogger()), Tick: 20 * time.Millisecond,
		CordonTries: 2, CordonInterval: 10 * time.Millisecond,
		Watch: pubsub.WatchOptions{Debounce: 10 * time.Millisecond, Resync: 200 * time.Millisecond}})
	if errs := f.c.SetConfigItems(f.items); len(errs) > 0 {
		f.t.Fatal(errs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel, f.done = cancel, make(chan struct{})
	go func() { defer close(f.done); f.c.Run(ctx) }()
}

func (f *fixture) stop() {
	if f.cancel != nil {
		f.cancel()
		<-f.done
		f.cancel = nil
	}
}

// reboot stops the agent, empties the run roots (EVE's and evelet's) and
// boots version.
func (f *fixture) reboot(version string) {
	f.t.Helper()
	f.stop()
	if err := f.sim.Reboot(evesim.Options{OSVersion: version}); err != nil {
		f.t.Fatal(err)
	}
	if err := os.RemoveAll(f.runDir); err != nil {
		f.t.Fatal(err)
	}
	f.start()
	f.setReady()
}

func (f *fixture) waitFor(what string, cond func() bool) {
	f.t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, deadline, true, func(context.Context) (bool, error) {
		return cond(), nil
	})
	if err != nil {
		f.t.Fatalf("waiting for %s: %v (statuses %v, state %+v)", what, err, f.pub.statuses(), f.c.State())
	}
}

func (f *fixture) waitStatus(s pubsub.DrainStatus) {
	f.t.Helper()
	f.waitFor("NodeDrainStatus "+s.String(), func() bool { return f.pub.last().Status == s })
}

func (f *fixture) node() *corev1.Node {
	f.t.Helper()
	n, err := f.cs.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return n
}

func (f *fixture) condition() *corev1.NodeCondition {
	for _, c := range f.node().Status.Conditions {
		if c.Type == ConditionType {
			return &c
		}
	}
	return nil
}

func (f *fixture) pods() int {
	l, err := f.cs.CoreV1().Pods("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return len(l.Items)
}

func (f *fixture) events() map[string]string {
	l, err := f.cs.CoreV1().Events("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range l.Items {
		if e.InvolvedObject.Kind == "Node" && e.InvolvedObject.Name == node {
			out[e.Reason] = e.Message
		}
	}
	return out
}

func (f *fixture) cordon(on bool) {
	f.t.Helper()
	n := f.node()
	n.Spec.Unschedulable = on
	if _, err := f.cs.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

// containsInOrder: want appears in got as a subsequence.
func containsInOrder(got, want []pubsub.DrainStatus) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

// An EVE-k style update: baseosmgr asks, evelet goes through every state to
// Complete, the node is cordoned and marked, the pods are evicted; the
// reboot into the new version uncordons, relabels, says OSUpdated.
func TestUpdateAskedByBaseOsMgr(t *testing.T) {
	f := newFixture(t, "a", "b")
	f.start()
	f.waitStatus(pubsub.DrainStatusNotRequested)
	if err := f.sim.SetNodeAgent(true, false); err != nil { // EVE-k: asks; BaseOsConfig alone does nothing
		t.Fatal(err)
	}
	f.waitFor("a snapshot with NodeAgentStatus", func() bool { f.c.mu.Lock(); defer f.c.mu.Unlock(); return f.c.snap.NodeAgent != nil })
	ct, err := f.sim.ActivateBaseOs(newOS, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.waitFor("a snapshot with the BaseOsConfig", func() bool { f.c.mu.Lock(); defer f.c.mu.Unlock(); return len(f.c.snap.BaseOsConfigs) == 1 })
	f.c.step(context.Background())
	if st := f.c.State(); st.Phase != PhaseIdle {
		t.Fatalf("an EVE-k build's BaseOsConfig alone started a cycle: %+v", st)
	}
	if _, err := f.sim.RequestDrain(pubsub.DrainRequesterUpdate, ct); err != nil {
		t.Fatal(err)
	}
	f.waitStatus(pubsub.DrainStatusComplete)
	want := []pubsub.DrainStatus{pubsub.DrainStatusNotRequested, pubsub.DrainStatusRequested, pubsub.DrainStatusStarting,
		pubsub.DrainStatusCordoned, pubsub.DrainStatusComplete}
	if got := f.pub.statuses(); !containsInOrder(got, want) {
		t.Errorf("statuses %v, want %v in order", got, want)
	}
	if rb := f.pub.last().RequestedBy; rb != pubsub.DrainRequesterUpdate {
		t.Errorf("RequestedBy %v, want Update", rb)
	}
	n := f.node()
	if !n.Spec.Unschedulable || n.Annotations[AnnotationPendingVersion] != newOS || !strings.Contains(n.Annotations[AnnotationRequestedBy], "baseosmgr") {
		t.Errorf("node not cordoned/marked: unschedulable=%v annotations=%v", n.Spec.Unschedulable, n.Annotations)
	}
	if c := f.condition(); c == nil || c.Status != corev1.ConditionTrue || c.Reason != ReasonDrained {
		t.Errorf("condition %+v, want True/Drained", c)
	}
	if f.pods() != 0 {
		t.Errorf("%d pods left", f.pods())
	}
	// A second identical request while drained changes nothing.
	before := len(f.pub.statuses())
	f.c.step(context.Background())
	if len(f.pub.statuses()) != before {
		t.Errorf("a repeated look at the same request published again: %v", f.pub.statuses())
	}

	f.reboot(newOS)
	f.waitFor("OSUpdated", func() bool { c := f.condition(); return c != nil && c.Reason == ReasonOSUpdated })
	n = f.node()
	if n.Spec.Unschedulable {
		t.Error("node still cordoned after the update")
	}
	if n.Labels[nodelabels.OSVersion] != nodelabels.SanitizeValue(newOS) {
		t.Errorf("os-version label %q", n.Labels[nodelabels.OSVersion])
	}
	if _, ok := n.Annotations[AnnotationPendingVersion]; ok {
		t.Errorf("pending annotation left: %v", n.Annotations)
	}
	if c := f.condition(); c.Status != corev1.ConditionFalse {
		t.Errorf("condition %+v, want False", c)
	}
	if _, ok := f.events()[ReasonOSUpdated]; !ok {
		t.Errorf("no OSUpdated event: %v", f.events())
	}
	f.waitStatus(pubsub.DrainStatusNotRequested)
	if st := f.c.State(); st.Phase != PhaseIdle {
		t.Errorf("state %+v, want idle", st)
	}
}

// On a build that does not ask, BaseOsConfig activating another version
// starts the drain; a fallback (same version after the reboot) ends with
// OSUpdateFailed, uncordoned, and the failed version does not start again.
func TestEarlyDetectionAndFallback(t *testing.T) {
	f := newFixture(t, "a")
	f.start()
	old := f.sim.OSVersion
	if _, err := f.sim.ActivateBaseOs(newOS, 0); err != nil {
		t.Fatal(err)
	}
	f.waitStatus(pubsub.DrainStatusComplete)
	if st := f.c.State(); st.Trigger != TriggerBaseOsConfig || st.ToVersion != newOS || st.FromVersion != old {
		t.Errorf("state %+v", st)
	}
	f.reboot(old) // GRUB fell back
	// The controller still activates newOS after the fallback.
	if _, err := f.sim.ActivateBaseOs(newOS, 0); err != nil {
		t.Fatal(err)
	}
	f.waitFor("OSUpdateFailed", func() bool { c := f.condition(); return c != nil && c.Reason == ReasonOSUpdateFailed })
	if f.node().Spec.Unschedulable {
		t.Error("node cordoned after the fallback")
	}
	if ev := f.events()[ReasonOSUpdateFailed]; !strings.Contains(ev, "fallback") {
		t.Errorf("OSUpdateFailed event %q", ev)
	}
	if l := f.node().Labels[nodelabels.OSVersion]; l != nodelabels.SanitizeValue(old) {
		t.Errorf("label %q after fallback", l)
	}
	// Several looks later: still idle (the failed version is remembered).
	for i := 0; i < 5; i++ {
		f.c.step(context.Background())
	}
	if st := f.c.State(); st.Phase != PhaseIdle {
		t.Errorf("the failed version started another cycle: %+v", st)
	}
	// The controller retries (RetryUpdateCounter): a new cycle.
	if _, err := f.sim.ActivateBaseOs(newOS, 1); err != nil {
		t.Fatal(err)
	}
	f.waitFor("a new cycle for the retry", func() bool { return f.c.State().Phase != PhaseIdle })
}

// The other partition turning updating, and NodeAgentStatus.DeviceReboot,
// each start a cycle on a build that does not ask; a reboot without an OS
// change ends with Rebooted.
func TestPartitionUpdatingAndDeviceReboot(t *testing.T) {
	t.Run("partition", func(t *testing.T) {
		f := newFixture(t, "a")
		f.start()
		if err := f.sim.SetPartitionUpdating(newOS); err != nil {
			t.Fatal(err)
		}
		f.waitStatus(pubsub.DrainStatusComplete)
		if st := f.c.State(); st.Trigger != TriggerPartitionUpdating || st.ToVersion != newOS {
			t.Errorf("state %+v", st)
		}
	})
	t.Run("reboot", func(t *testing.T) {
		f := newFixture(t, "a")
		f.start()
		old := f.sim.OSVersion
		if err := f.sim.SetNodeAgent(false, true); err != nil {
			t.Fatal(err)
		}
		f.waitStatus(pubsub.DrainStatusComplete)
		if st := f.c.State(); st.Trigger != TriggerDeviceReboot || st.ToVersion != "" || st.Requester != pubsub.DrainRequesterDeviceOp {
			t.Errorf("state %+v", st)
		}
		f.reboot(old)
		f.waitFor("Rebooted", func() bool { c := f.condition(); return c != nil && c.Reason == ReasonRebooted })
		if f.node().Spec.Unschedulable {
			t.Error("node cordoned after the reboot")
		}
	})
}

// A PDB that never allows the eviction: DrainRetrying, then FailedDrain
// after the configured attempts; EVE withdraws -> uncordoned; EVE asks
// again -> a new cycle.
func TestFailedDrainWithdrawAndRetry(t *testing.T) {
	f := newFixture(t, "stuck")
	f.blocked.Store(true)
	f.start()
	start := time.Now()
	if _, err := f.sim.RequestDrain(pubsub.DrainRequesterDeviceOp, "reboot"); err != nil {
		t.Fatal(err)
	}
	f.waitStatus(pubsub.DrainStatusFailedDrain)
	took := time.Since(start)
	if !containsInOrder(f.pub.statuses(), []pubsub.DrainStatus{pubsub.DrainStatusCordoned, pubsub.DrainStatusDrainRetrying, pubsub.DrainStatusFailedDrain}) {
		t.Errorf("statuses %v", f.pub.statuses())
	}
	// 2 attempts of 1s and 100ms between: well under 5s.
	if took > 5*time.Second {
		t.Errorf("FailedDrain after %v", took)
	}
	if c := f.condition(); c == nil || c.Reason != ReasonDrainFailed || !strings.Contains(c.Message, "default/stuck") {
		t.Errorf("condition %+v", c)
	}
	if !f.node().Spec.Unschedulable {
		t.Error("node uncordoned before EVE withdrew")
	}
	if err := f.sim.WithdrawDrain(pubsub.DrainRequesterDeviceOp); err != nil {
		t.Fatal(err)
	}
	f.waitFor("uncordon after the withdrawal", func() bool { return !f.node().Spec.Unschedulable })
	f.waitStatus(pubsub.DrainStatusNotRequested)
	if c := f.condition(); c.Reason != ReasonWithdrawn || c.Status != corev1.ConditionFalse {
		t.Errorf("condition %+v", c)
	}
	// EVE asks again; this time the PDB allows it.
	f.blocked.Store(false)
	if _, err := f.sim.RequestDrain(pubsub.DrainRequesterDeviceOp, "reboot"); err != nil {
		t.Fatal(err)
	}
	f.waitStatus(pubsub.DrainStatusComplete)
}

// FailedDrain, then EVE asks again without the withdrawal being seen in
// between (new RequestedAt): a new cycle, evelet still owns the cordon.
func TestRetryAfterFailureKeepsCordonOwnership(t *testing.T) {
	f := newFixture(t, "stuck")
	f.blocked.Store(true)
	f.start()
	if _, err := f.sim.RequestDrain(pubsub.DrainRequesterDeviceOp, "reboot"); err != nil {
		t.Fatal(err)
	}
	f.waitStatus(pubsub.DrainStatusFailedDrain)
	f.blocked.Store(false)
	if _, err := f.sim.RequestDrain(pubsub.DrainRequesterDeviceOp, "reboot"); err != nil {
		t.Fatal(err)
	}
	f.waitStatus(pubsub.DrainStatusComplete)
	if st := f.c.State(); !st.WeCordoned {
		t.Errorf("retry lost cordon ownership: %+v", st)
	}
}

// An admin's cordon survives the whole cycle, also a withdrawal.
func TestAdminCordonSurvives(t *testing.T) {
	f := newFixture(t, "a")
	f.cordon(true)
	f.start()
	if _, err := f.sim.ActivateBaseOs(newOS, 0); err != nil {
		t.Fatal(err)
	}
	f.waitStatus(pubsub.DrainStatusComplete)
	if st := f.c.State(); st.WeCordoned {
		t.Fatalf("evelet claims the admin's cordon: %+v", st)
	}
	f.reboot(newOS)
	f.waitFor("OSUpdated", func() bool { c := f.condition(); return c != nil && c.Reason == ReasonOSUpdated })
	if !f.node().Spec.Unschedulable {
		t.Error("the admin's cordon was removed")
	}
	if ev := f.events()[ReasonOSUpdated]; !strings.Contains(ev, "stays") {
		t.Errorf("event %q should say the cordon stays", ev)
	}
}

// kill -9 in the middle of a drain: the next run resumes from the state
// file (same cycle, attempt count kept, cordon ownership kept).
func TestResumeAfterKill(t *testing.T) {
	f := newFixture(t, "stuck")
	f.items[KeyDrainAttempts] = "3"
	f.blocked.Store(true)
	f.start()
	if _, err := f.sim.RequestDrain(pubsub.DrainRequesterDeviceOp, "reboot"); err != nil {
		t.Fatal(err)
	}
	f.waitStatus(pubsub.DrainStatusDrainRetrying)
	before := f.c.State()
	f.stop() // the process is gone; only the state file and /run remain
	saved, err := loadState(f.state)
	if err != nil || saved.Phase != PhaseDraining || !saved.WeCordoned || saved.Attempt < 1 {
		t.Fatalf("state file %+v, %v", saved, err)
	}
	f.blocked.Store(false)
	f.start()
	f.waitStatus(pubsub.DrainStatusComplete)
	after := f.c.State()
	if after.Key != before.Key || !after.WeCordoned || after.Attempt <= saved.Attempt-1 {
		t.Errorf("resumed a different cycle: before %+v after %+v", before, after)
	}
	if f.pods() != 0 {
		t.Errorf("%d pods left", f.pods())
	}
}

// EVE withdraws the request while the drain still runs: the drain stops,
// the node is uncordoned.
func TestWithdrawDuringDrain(t *testing.T) {
	f := newFixture(t, "stuck")
	f.items[KeyDrainTimeout] = "1m"
	f.blocked.Store(true)
	f.start()
	if _, err := f.sim.RequestDrain(pubsub.DrainRequesterDeviceOp, "reboot"); err != nil {
		t.Fatal(err)
	}
	f.waitStatus(pubsub.DrainStatusCordoned)
	if err := f.sim.WithdrawDrain(pubsub.DrainRequesterDeviceOp); err != nil {
		t.Fatal(err)
	}
	f.waitFor("uncordoned", func() bool { return !f.node().Spec.Unschedulable && f.c.State().Phase == PhaseIdle })
}

// baseosmgr fails the update (no reboot follows): uncordon, OSUpdateFailed.
func TestUpdateFailsBeforeReboot(t *testing.T) {
	f := newFixture(t, "a")
	f.start()
	if _, err := f.sim.ActivateBaseOs(newOS, 0); err != nil {
		t.Fatal(err)
	}
	f.waitStatus(pubsub.DrainStatusComplete)
	if err := f.sim.FailBaseOs(newOS, "image verification failed"); err != nil {
		t.Fatal(err)
	}
	f.waitFor("OSUpdateFailed", func() bool { c := f.condition(); return c != nil && c.Reason == ReasonOSUpdateFailed })
	if f.node().Spec.Unschedulable {
		t.Error("still cordoned")
	}
	if ev := f.events()[ReasonOSUpdateFailed]; !strings.Contains(ev, "image verification failed") {
		t.Errorf("event %q", ev)
	}
}

// A cordon that cannot be written: FailedCordon.
func TestFailedCordon(t *testing.T) {
	f := newFixture(t, "a")
	f.cs.PrependReactor("patch", "nodes", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if strings.Contains(string(a.(k8stesting.PatchAction).GetPatch()), "unschedulable") {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "nodes"}, node, nil)
		}
		return false, nil, nil
	})
	f.start()
	if _, err := f.sim.RequestDrain(pubsub.DrainRequesterUpdate, ""); err != nil {
		t.Fatal(err)
	}
	f.waitStatus(pubsub.DrainStatusFailedCordon)
	if c := f.condition(); c == nil || c.Reason != ReasonCordonFailed {
		t.Errorf("condition %+v", c)
	}
}

func TestSettingsFromConfigItems(t *testing.T) {
	s, errs := SettingsFromConfigItems(map[string]string{KeyDrainTimeout: "90s", KeyDrainAttempts: "0", "evelet.upgrade.bogus": "1",
		KeyDrainRetryInterval: "soon", "evelet.policy.x": "ignored"})
	if s.DrainTimeout != 90*time.Second || s.DrainAttempts != 4 || s.DrainRetryInterval != 300*time.Second {
		t.Errorf("settings %+v", s)
	}
	if len(errs) != 3 {
		t.Errorf("errors %v, want 3 (attempts, bogus, interval)", errs)
	}
}

// Nothing in the cluster starts a cycle: annotations and labels that look
// like a request are ignored.
func TestClusterCannotAsk(t *testing.T) {
	f := newFixture(t, "a")
	n := f.node()
	n.Annotations = map[string]string{AnnotationPendingVersion: newOS, AnnotationRequestedBy: "cluster-admin", AnnotationDrainStatus: "Requested"}
	n.Labels[nodelabels.OSVersion] = "99.0.0"
	if _, err := f.cs.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.start()
	f.waitStatus(pubsub.DrainStatusNotRequested)
	for i := 0; i < 5; i++ {
		f.c.step(context.Background())
	}
	if st := f.c.State(); st.Phase != PhaseIdle {
		t.Errorf("cluster objects started a cycle: %+v", st)
	}
	if f.pods() != 1 || f.node().Spec.Unschedulable {
		t.Error("cluster objects caused a drain")
	}
}

// Where zedkube owns NodeDrainStatus (EVE-k) evelet publishes nothing but
// still drains its node when EVE asks.
func TestNoPublisherStillDrains(t *testing.T) {
	f := newFixture(t, "a")
	f.start()
	f.stop()
	f.c = nil
	c := New(Config{Client: f.cs, Node: node, EVE: f.sim.Root, StateFile: f.state, BootMarker: filepath.Join(f.runDir, "upgrade-boot"),
		Log: logrus.NewEntry(logrus.StandardLogger()), Tick: 20 * time.Millisecond,
		Watch: pubsub.WatchOptions{Debounce: 10 * time.Millisecond, Resync: 200 * time.Millisecond}})
	c.SetConfigItems(f.items)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if _, err := f.sim.RequestDrain(pubsub.DrainRequesterUpdate, ""); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, deadline, true, func(context.Context) (bool, error) {
		return c.State().Phase == PhaseDrained, nil
	})
	if err != nil || f.pods() != 0 || !f.node().Spec.Unschedulable {
		t.Fatalf("no drain without a publisher: %v, state %+v, %d pods", err, c.State(), f.pods())
	}
}

// nodeagentLatch is nodeagent's rule, written from pillar's
// cmd/nodeagent/handlenodedrain.go (handleNodeDrainStatusImpl): statuses
// not requested by DeviceOp are ignored; a DeviceOp status from Requested
// (3) up to FailedDrain (8) sets WaitDrainInProgress; only a DeviceOp
// Complete (9) clears it. While set, zedagent defers the Local Profile
// Server's shutdown, poweroff and graceful-reboot commands.
func nodeagentLatch(all []pubsub.NodeDrainStatus) bool {
	wait := false
	for _, s := range all {
		if s.RequestedBy != pubsub.DrainRequesterDeviceOp {
			continue
		}
		if s.Status >= pubsub.DrainStatusRequested && s.Status < pubsub.DrainStatusComplete {
			wait = true
		}
		if s.Status == pubsub.DrainStatusComplete {
			wait = false
		}
	}
	return wait
}

func (r *recorder) latched() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return nodeagentLatch(r.all)
}

// TestDeviceOpCyclesReleaseNodeagent (issue 16): every DeviceOp cycle ends
// in a state that releases nodeagent's WaitDrainInProgress. Before, a
// failed cycle ended with NotRequested (RequestedBy None), which nodeagent
// ignores, so the latch stayed set and the owner's local shutdown and
// reboot commands waited for ever.
func TestDeviceOpCyclesReleaseNodeagent(t *testing.T) {
	t.Run("asked, drain fails, EVE withdraws", func(t *testing.T) {
		f := newFixture(t, "stuck")
		f.blocked.Store(true)
		f.start()
		if _, err := f.sim.RequestDrain(pubsub.DrainRequesterDeviceOp, "reboot"); err != nil {
			t.Fatal(err)
		}
		f.waitStatus(pubsub.DrainStatusFailedDrain)
		if !f.pub.latched() {
			t.Fatal("the failure while EVE still asks should hold nodeagent")
		}
		if err := f.sim.WithdrawDrain(pubsub.DrainRequesterDeviceOp); err != nil {
			t.Fatal(err)
		}
		f.waitStatus(pubsub.DrainStatusNotRequested)
		if f.pub.latched() {
			t.Fatalf("nodeagent still waits after the cycle ended: %v", f.pub.all)
		}
	})
	t.Run("asked, EVE withdraws during the drain", func(t *testing.T) {
		f := newFixture(t, "stuck")
		f.items[KeyDrainTimeout] = "1m"
		f.blocked.Store(true)
		f.start()
		if _, err := f.sim.RequestDrain(pubsub.DrainRequesterDeviceOp, "reboot"); err != nil {
			t.Fatal(err)
		}
		f.waitStatus(pubsub.DrainStatusCordoned)
		if err := f.sim.WithdrawDrain(pubsub.DrainRequesterDeviceOp); err != nil {
			t.Fatal(err)
		}
		f.waitFor("cycle ended", func() bool {
			return f.c.State().Phase == PhaseIdle && f.pub.last().Status == pubsub.DrainStatusNotRequested
		})
		if f.pub.latched() {
			t.Fatalf("nodeagent still waits after the withdrawal: %v", f.pub.all)
		}
	})
	t.Run("not asked, reboot pending, drain fails", func(t *testing.T) {
		f := newFixture(t, "stuck")
		f.blocked.Store(true)
		f.start()
		if err := f.sim.SetNodeAgent(false, true); err != nil {
			t.Fatal(err)
		}
		f.waitFor("FailedDrain", func() bool { return f.c.State().Phase == PhaseFailed })
		f.waitFor("nodeagent released", func() bool { return !f.pub.latched() })
		// An agent restart republishes the failure: released again.
		f.stop()
		f.start()
		f.waitFor("resumed failure published", func() bool { return len(f.pub.statuses()) > 0 && f.c.State().Phase == PhaseFailed })
		f.waitFor("nodeagent released after the restart", func() bool { return !f.pub.latched() })
	})
	t.Run("drained", func(t *testing.T) {
		f := newFixture(t, "a")
		f.start()
		if _, err := f.sim.RequestDrain(pubsub.DrainRequesterDeviceOp, "reboot"); err != nil {
			t.Fatal(err)
		}
		f.waitStatus(pubsub.DrainStatusComplete)
		if f.pub.latched() {
			t.Fatal("Complete did not release nodeagent")
		}
	})
}

// TestNoAskDefaultsFitEVEsRebootWindow (issue 16): on builds that do not
// ask, EVE resets the device RebootWindow (30 s + app halt + 30 s) after
// it schedules the reboot, whatever the drain's state. The default budget
// must end inside it, leaving a pod evicted at the start its default 30 s
// grace period. The old defaults (zedkube's: 4 attempts of 10 min, 300 s
// apart, 55 min) applied to every build. Where EVE asks (and waits),
// zedkube's defaults stay; the owner's items win on both.
func TestNoAskDefaultsFitEVEsRebootWindow(t *testing.T) {
	const defaultGrace = 30 * time.Second
	noAsk, _ := SettingsFor(nil, false)
	if b := noAsk.Budget(); b >= RebootWindow || defaultGrace >= RebootWindow {
		t.Errorf("no-ask budget %v does not end inside EVE's %v window", b, RebootWindow)
	}
	if asks, _ := SettingsFor(nil, true); asks != DefaultSettings() {
		t.Errorf("asking build: %+v, want zedkube's %+v", asks, DefaultSettings())
	}
	own, errs := SettingsFor(map[string]string{KeyDrainTimeout: "5m", KeyDrainAttempts: "2"}, false)
	if len(errs) != 0 || own.DrainTimeout != 5*time.Minute || own.DrainAttempts != 2 || own.DrainRetryInterval != noAsk.DrainRetryInterval {
		t.Errorf("owner's items on a no-ask build: %+v %v", own, errs)
	}
}
