package drain

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func pod(name, node string, mut ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Spec: corev1.PodSpec{NodeName: node},
		Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	for _, m := range mut {
		m(p)
	}
	return p
}

// The fake clientset has no field selectors or eviction semantics, so the
// reactor below plays the apiserver: an eviction deletes the pod unless a
// "PDB" blocks it the first n times.
func TestDrainEvictsSkipsDaemonSetsAndRetriesPDB(t *testing.T) {
	ds := pod("ds", "n1", func(p *corev1.Pod) {
		p.OwnerReferences = []metav1.OwnerReference{{Kind: "DaemonSet", Name: "x", Controller: ptrTrue()}}
	})
	mirror := pod("mirror", "n1", func(p *corev1.Pod) { p.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "x"} })
	cs := fake.NewSimpleClientset(pod("a", "n1"), pod("b", "n1"), ds, mirror)
	blocks := 2
	var evicted []string
	cs.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		ev := a.(k8stesting.CreateAction).GetObject().(*policyv1.Eviction)
		if ev.Name == "b" && blocks > 0 {
			blocks--
			return true, nil, apierrors.NewTooManyRequests("pdb", 1)
		}
		evicted = append(evicted, ev.Name)
		return true, nil, cs.Tracker().Delete(schema.GroupVersionResource{Version: "v1", Resource: "pods"}, ev.Namespace, ev.Name)
	})
	d := &Drainer{Client: cs, Node: "n1", Log: logrus.NewEntry(logrus.New()), RetryInterval: 10 * time.Millisecond, Timeout: 5 * time.Second}
	if err := d.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(evicted) != 2 || blocks != 0 {
		t.Fatalf("evicted %v (PDB blocks left %d); want a and b, b after two refusals", evicted, blocks)
	}
	left, _ := cs.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{})
	if len(left.Items) != 2 {
		t.Fatalf("pods left %d, want the DaemonSet and mirror pods", len(left.Items))
	}
}

func TestDrainTimesOutNamingPods(t *testing.T) {
	cs := fake.NewSimpleClientset(pod("stuck", "n1"))
	cs.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewTooManyRequests("pdb", 1)
	})
	d := &Drainer{Client: cs, Node: "n1", Log: logrus.NewEntry(logrus.New()), RetryInterval: 10 * time.Millisecond, Timeout: 100 * time.Millisecond}
	err := d.Drain(context.Background())
	if err == nil || !strings.Contains(err.Error(), "default/stuck") {
		t.Fatalf("err = %v, want a timeout naming default/stuck", err)
	}
}

func ptrTrue() *bool { b := true; return &b }

// A finished pod is not evicted; a finished pod still being deleted is
// waited for.
func TestDrainWaitsForTerminatingFinishedPods(t *testing.T) {
	now := metav1.Now()
	done := pod("done", "n1", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded })
	going := pod("going", "n1", func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed; p.DeletionTimestamp = &now })
	cs := fake.NewSimpleClientset(done, going)
	var evictions int
	cs.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		evictions++
		return true, nil, nil
	})
	d := &Drainer{Client: cs, Node: "n1", Log: logrus.NewEntry(logrus.New()), RetryInterval: 10 * time.Millisecond, Timeout: 200 * time.Millisecond}
	err := d.Drain(context.Background())
	if err == nil || !strings.Contains(err.Error(), "default/going") || strings.Contains(err.Error(), "default/done") {
		t.Fatalf("err = %v, want a timeout naming only default/going", err)
	}
	if evictions != 0 {
		t.Errorf("%d evictions of finished pods", evictions)
	}
	if err := cs.Tracker().Delete(schema.GroupVersionResource{Version: "v1", Resource: "pods"}, "default", "going"); err != nil {
		t.Fatal(err)
	}
	if err := d.Drain(context.Background()); err != nil {
		t.Fatalf("drain with only a finished pod left: %v", err)
	}
}
