package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/lf-edge/evelet/agent/upgrade"
	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/internal/nodelabels"
	"github.com/lf-edge/evelet/tests/devnet"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"k8s.io/utils/ptr"
)

// availability watches a Deployment's pods and keeps the lowest number of
// available ones (Ready and not being deleted: what a PDB counts) seen
// since it was armed, from every watch event, not from samples.
type availability struct {
	mu    sync.Mutex
	pods  map[string]bool // pod name -> available
	min   int
	armed bool
	err   error
}

func watchAvailability(t *testing.T, ctx context.Context, app string) *availability {
	t.Helper()
	cs := env.cp.Client()
	sel := "app=" + app
	l, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	a := &availability{pods: map[string]bool{}, min: -1}
	for i := range l.Items {
		a.pods[l.Items[i].Name] = podAvailable(&l.Items[i])
	}
	rw, err := watchtools.NewRetryWatcherWithContext(ctx, l.ResourceVersion, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = sel
			return cs.CoreV1().Pods("default").Watch(ctx, o)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rw.Stop)
	go func() {
		for ev := range rw.ResultChan() {
			a.apply(ev)
		}
	}()
	return a
}

func podAvailable(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (a *availability) apply(ev watch.Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var obj runtime.Object = ev.Object
	p, ok := obj.(*corev1.Pod)
	if !ok {
		if ev.Type == watch.Error {
			a.err = fmt.Errorf("watch error: %v", ev.Object)
		}
		return
	}
	switch ev.Type {
	case watch.Deleted:
		delete(a.pods, p.Name)
	case watch.Added, watch.Modified:
		a.pods[p.Name] = podAvailable(p)
	}
	if a.armed {
		if n := a.countLocked(); a.min < 0 || n < a.min {
			a.min = n
		}
	}
}

func (a *availability) countLocked() int {
	n := 0
	for _, ok := range a.pods {
		if ok {
			n++
		}
	}
	return n
}

func (a *availability) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.countLocked()
}

// arm starts recording the minimum from the current count.
func (a *availability) arm() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.armed, a.min = true, a.countLocked()
}

func (a *availability) lowest() (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.min, a.err
}

// rebootDevice is devnet's Reboot plus what EVE publishes at boot that
// devnet's Reboot (as of h1's 390b309..ca26267) loses: it empties <run>
// after evesim's Reboot wrote eve-release and ZbootStatus there, so the
// running version would be unknown. Also nodeagent's status, which the
// coordinator reads to know that this EVE build asks for drains.
func rebootDevice(t *testing.T, d *devnet.Device, version string) time.Time {
	t.Helper()
	if err := d.Reboot(devnet.RebootOptions{OSVersion: version}); err != nil {
		t.Fatal(err)
	}
	upAt := time.Now()
	if err := d.EVE().PublishBoot(); err != nil {
		t.Fatal(err)
	}
	if err := d.EVE().SetNodeAgent(true, false); err != nil {
		t.Fatal(err)
	}
	return upAt
}

// TestOSUpdateTwoDevices is issue 10's "Done means": two simulated EVE
// devices (tests/devnet: own network namespace, containerd, agent) in one
// cluster; a Deployment of 3 replicas with a PDB minAvailable 2 spread
// over both. Device 1 gets a new OS version from the EVE side only
// (BaseOsConfig, then baseosmgr's NodeDrainRequest, EVE-k style): its pods
// are evicted and rescheduled onto device 2 with the PDB never violated (a
// watch counts available pods on every change); NodeDrainStatus goes
// through the states to Complete (read from the socket); the reboot into
// the new version brings device 1 back Ready, uncordoned, labelled with
// the new version, with an OSUpdated event. Then a second update falls
// back to the running version: OSUpdateFailed.
func TestOSUpdateTwoDevices(t *testing.T) {
	needEnv(t)
	if env.devnet == nil {
		t.Skip("no devnet bridge in this environment")
	}
	ctx := testCtx(t, 25*time.Minute)
	cs := env.cp.Client()
	opts := devnet.DeviceOptions{ControlPlane: env.cp, Evelet: env.evelet, Images: env.images, NoJoin: true}
	d1 := env.devnet.NewDevice(t, 3, opts)
	d2 := env.devnet.NewDevice(t, 4, opts)
	devs := []*devnet.Device{d1, d2}
	for _, d := range devs {
		deleteNodeAtEnd(t, d.NodeName())
		c, err := d.Cluster(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range upgradeItems {
			c.ConfigItems[k] = v
		}
		if err := d.EVE().SetCluster(c); err != nil {
			t.Fatal(err)
		}
		if err := d.EVE().SetNodeAgent(true, false); err != nil {
			t.Fatal(err)
		}
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range devs {
		if _, err := d.WaitReady(ctx, 5*time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	n1, n2 := d1.NodeName(), d2.NodeName()
	t.Logf("devices %s and %s Ready", n1, n2)
	ds := followDrainStatus(t, d1.EVE().Root)
	ds.wait(2*time.Minute, pubsub.DrainStatusNotRequested, 0)

	// 3 replicas over the two devices, PDB minAvailable 2.
	const app = "upg-2dev"
	dep := busyboxDeployment(app, "", "exec sleep 3600")
	dep.Spec.Replicas = ptr.To[int32](3)
	dep.Spec.Template.Spec.NodeSelector = nil
	dep.Spec.Template.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: []string{n1, n2}}},
		}}},
	}}
	dep.Spec.Template.Spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{
		MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.ScheduleAnyway,
		LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
	}}
	// Ready only once the container runs: the PDB counts Ready pods.
	dep.Spec.Template.Spec.Containers[0].ReadinessProbe = &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}, PeriodSeconds: 2}
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.AppsV1().Deployments("default").Delete(context.Background(), app, metav1.DeleteOptions{}) })
	pdb := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: "default"},
		Spec: policyv1.PodDisruptionBudgetSpec{MinAvailable: &intstr.IntOrString{Type: intstr.Int, IntVal: 2},
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}},
	}
	if _, err := cs.PolicyV1().PodDisruptionBudgets("default").Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.PolicyV1().PodDisruptionBudgets("default").Delete(context.Background(), app, metav1.DeleteOptions{})
	})
	waitFor(t, 4*time.Minute, "3 pods Ready on both devices and the PDB allowing 1 disruption", func() (bool, error) {
		on := map[string]int{}
		l, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			return false, err
		}
		for i := range l.Items {
			if podAvailable(&l.Items[i]) {
				on[l.Items[i].Spec.NodeName]++
			}
		}
		p, err := cs.PolicyV1().PodDisruptionBudgets("default").Get(ctx, app, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		ok := on[n1] >= 1 && on[n2] >= 1 && on[n1]+on[n2] == 3 &&
			p.Status.ObservedGeneration == p.Generation && p.Status.CurrentHealthy == 3 && p.Status.DisruptionsAllowed == 1
		return ok, fmt.Errorf("ready per node %v, PDB %+v", on, p.Status)
	})
	avail := watchAvailability(t, ctx, app)
	waitFor(t, time.Minute, "the watch sees 3 available", func() (bool, error) { return avail.count() == 3, nil })
	avail.arm()

	// Device 1: a new OS version, from the EVE side only.
	ct, err := d1.EVE().ActivateBaseOs(upgradeTarget, 0)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if _, err := d1.EVE().RequestDrain(pubsub.DrainRequesterUpdate, ct); err != nil {
		t.Fatal(err)
	}
	ds.wait(5*time.Minute, pubsub.DrainStatusComplete, pubsub.DrainRequesterUpdate)
	t.Logf("device 1: request -> Complete in %v", time.Since(t0).Round(time.Millisecond))
	want := []pubsub.DrainStatus{pubsub.DrainStatusRequested, pubsub.DrainStatusStarting, pubsub.DrainStatusCordoned, pubsub.DrainStatusComplete}
	if !inOrder(statusesAfter(ds.statuses(), pubsub.DrainStatusRequested), want) {
		t.Errorf("NodeDrainStatus %v, want %v in order", ds.statuses(), want)
	}
	if p := podsOn(t, n1, app); len(p) != 0 {
		t.Errorf("%d pods still on device 1 after Complete", len(p))
	}
	waitFor(t, 3*time.Minute, "3 pods available on device 2", func() (bool, error) {
		n := 0
		for _, p := range podsOn(t, n2, app) {
			if podAvailable(&p) {
				n++
			}
		}
		return n == 3, fmt.Errorf("%d available on %s", n, n2)
	})
	if low, err := avail.lowest(); low < 2 || err != nil {
		t.Errorf("PDB violated: %d pods available at the lowest (watch error %v)", low, err)
	} else {
		t.Logf("lowest availability during the drain: %d of 3 (PDB minAvailable 2)", low)
	}
	n := getNode(t, n1)
	if !n.Spec.Unschedulable || n.Annotations[upgrade.AnnotationPendingVersion] != upgradeTarget {
		t.Errorf("device 1 not cordoned and marked: %v %v", n.Spec.Unschedulable, n.Annotations)
	}

	// The reboot into the new version.
	upAt := rebootDevice(t, d1, upgradeTarget)
	if _, err := d1.WaitReadyAfter(ctx, upAt, 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	n = waitCondition(t, n1, upgrade.ReasonOSUpdated, 3*time.Minute)
	if n.Spec.Unschedulable || n.Labels[nodelabels.OSVersion] != nodelabels.SanitizeValue(upgradeTarget) {
		t.Errorf("device 1 after the update: unschedulable %v label %q", n.Spec.Unschedulable, n.Labels[nodelabels.OSVersion])
	}
	waitEvent(t, n1, upgrade.ReasonOSUpdated, upgradeTarget)
	t.Logf("device 1 back Ready on %s, uncordoned, labelled, OSUpdated %v after the reboot began", upgradeTarget, time.Since(upAt).Round(time.Millisecond))
	if low, _ := avail.lowest(); low < 2 {
		t.Errorf("PDB violated around the reboot: %d available at the lowest", low)
	}

	// A second update that falls back to the running version.
	ct, err = d1.EVE().ActivateBaseOs("16.14.0-kvm-amd64", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d1.EVE().RequestDrain(pubsub.DrainRequesterUpdate, ct); err != nil {
		t.Fatal(err)
	}
	ds.wait(5*time.Minute, pubsub.DrainStatusComplete, pubsub.DrainRequesterUpdate)
	rebootDevice(t, d1, upgradeTarget)
	n = waitCondition(t, n1, upgrade.ReasonOSUpdateFailed, 5*time.Minute)
	if n.Spec.Unschedulable || n.Labels[nodelabels.OSVersion] != nodelabels.SanitizeValue(upgradeTarget) {
		t.Errorf("device 1 after the fallback: unschedulable %v label %q", n.Spec.Unschedulable, n.Labels[nodelabels.OSVersion])
	}
	waitEvent(t, n1, upgrade.ReasonOSUpdateFailed, "fallback")
	t.Logf("device 1 fell back to %s: OSUpdateFailed, uncordoned", upgradeTarget)
	if low, _ := avail.lowest(); low < 2 {
		t.Errorf("PDB violated: %d available at the lowest", low)
	}
}
