package apicache

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

func pod(ns, name, node, rv string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: rv}, Spec: corev1.PodSpec{NodeName: node}}
}

// TestStoreScopes: a list replaces exactly its scope (the node's pods),
// not other nodes' or other namespaces' objects; what was stored survives
// a reopen, with the scope's resource version.
func TestStoreScopes(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	mine := Scope{GVR: podGVR, Fields: "spec.nodeName=n1"}
	if err := s.Put(podGVR, pod("a", "other-node", "n2", "5")); err != nil {
		t.Fatal(err)
	}
	if err := s.Replace(podGVR, mine, []runtime.Object{pod("a", "p1", "n1", "7"), pod("b", "p2", "n1", "8")}, "10"); err != nil {
		t.Fatal(err)
	}
	// p1 deleted upstream: the next list lacks it.
	if err := s.Replace(podGVR, mine, []runtime.Object{pod("b", "p2", "n1", "11")}, "12"); err != nil {
		t.Fatal(err)
	}
	s2, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := s2.List(podGVR, mine)
	if len(got) != 1 || objKey(got[0]) != "b/p2" {
		t.Fatalf("scope after reopen: %v", got)
	}
	if _, ok := s2.Get(podGVR, "a", "other-node"); !ok {
		t.Error("an object outside the scope was dropped")
	}
	if rv := s2.ScopeRV(mine); rv != "12" {
		t.Errorf("scope RV %q, want 12", rv)
	}
	if ns := s2.List(podGVR, Scope{GVR: podGVR, Namespace: "a"}); len(ns) != 1 {
		t.Errorf("namespace a: %d pods, want 1", len(ns))
	}
	if bad := s2.List(podGVR, Scope{GVR: podGVR, Fields: "spec.nodeName=="}); len(bad) != 0 {
		t.Errorf("a selector that does not parse matched %d", len(bad))
	}
}
