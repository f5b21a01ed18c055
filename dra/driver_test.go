package dra

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lf-edge/evelet/dra/claimspec"
	"github.com/lf-edge/evelet/eve/pubsub"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
)

func claim(uid, name, dev string, pods ...string) *resourceapi.ResourceClaim {
	c := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID(uid)},
		Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{
			Devices: resourceapi.DeviceAllocationResult{Results: []resourceapi.DeviceRequestAllocationResult{
				{Request: "serial", Driver: DriverName, Pool: "node1", Device: dev},
			}},
		}},
	}
	for _, p := range pods {
		c.Status.ReservedFor = append(c.Status.ReservedFor, resourceapi.ResourceClaimConsumerReference{Resource: "pods", Name: p, UID: types.UID(p + "-uid")})
	}
	return c
}

func testDriver(t *testing.T, assigned *[]string, objs ...runtime.Object) (*Driver, *fake.Clientset) {
	t.Helper()
	root := pubsub.Root{Run: t.TempDir()}
	if err := pubsub.Write(AdaptersFile(root), testAdapters()); err != nil {
		t.Fatal(err)
	}
	cs := fake.NewSimpleClientset(objs...)
	d := New(Config{NodeName: "node1", Client: cs, CDIDir: filepath.Join(t.TempDir(), "cdi"), EVE: root, Sysfs: fakeSysfs(t),
		Assigned: func() []string { return *assigned }})
	d.selection()
	return d, cs
}

func TestPrepareWritesCDISpecForTheClaimsPods(t *testing.T) {
	assigned := []string{"COM1", "modem"}
	d, _ := testDriver(t, &assigned)
	ctx := context.Background()
	c := claim("0b4d0c2e-7a35-4f0e-a1b2-111111111111", "c1", "com1", "p1")
	res, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c})
	if err != nil || res[c.UID].Err != nil {
		t.Fatal(err, res[c.UID].Err)
	}
	want := "eve.lf-edge.org/claim=0b4d0c2e-7a35-4f0e-a1b2-111111111111_com1"
	if got := res[c.UID].Devices; len(got) != 1 || got[0].CDIDeviceIDs[0] != want || got[0].DeviceName != "com1" || got[0].PoolName != "node1" {
		t.Fatalf("devices %+v", got)
	}
	spec, err := claimspec.Read(d.cfg.CDIDir, string(c.UID))
	if err != nil {
		t.Fatal(err)
	}
	dev, ok := spec.Device("com1")
	if !ok || strings.Join(dev.Nodes, ",") != "/dev/ttyS0" || dev.Adapter != "COM1" || !spec.HasPod("p1-uid") || spec.HasPod("p2-uid") {
		t.Fatalf("spec %+v", spec)
	}
	// The same adapter in a second claim is refused (the scheduler should
	// never allocate it twice; the driver is the last line of defence).
	c2 := claim("0b4d0c2e-7a35-4f0e-a1b2-222222222222", "c2", "com1", "p2")
	res, _ = d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c2})
	if res[c2.UID].Err == nil || !strings.Contains(res[c2.UID].Err.Error(), "already prepared for claim default/c1") {
		t.Fatalf("second claim: %v", res[c2.UID].Err)
	}
	// A device the owner does not assign.
	c3 := claim("0b4d0c2e-7a35-4f0e-a1b2-333333333333", "c3", "eth1", "p3")
	res, _ = d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c3})
	if res[c3.UID].Err == nil || !strings.Contains(res[c3.UID].Err.Error(), "not (or no longer) assigned") {
		t.Fatalf("unassigned: %v", res[c3.UID].Err)
	}
	// Unprepare removes the spec, twice without error.
	for i := 0; i < 2; i++ {
		ur, _ := d.UnprepareResourceClaims(ctx, []kubeletplugin.NamespacedObject{{UID: c.UID, NamespacedName: types.NamespacedName{Namespace: "default", Name: "c1"}}})
		if ur[c.UID] != nil {
			t.Fatal(ur[c.UID])
		}
	}
	if _, err := claimspec.Read(d.cfg.CDIDir, string(c.UID)); err != claimspec.ErrNotPrepared {
		t.Fatalf("after unprepare: %v", err)
	}
}

func TestWithdrawnDeviceEvictsItsPodsWithAnEvent(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p1", Namespace: "default", UID: "p1-uid"}}
	other := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p2", Namespace: "default", UID: "p2-uid"}}
	assigned := []string{"COM1", "modem"}
	root := pubsub.Root{Run: t.TempDir()}
	if err := pubsub.Write(AdaptersFile(root), testAdapters()); err != nil {
		t.Fatal(err)
	}
	cs := fake.NewSimpleClientset(pod, other)
	d := New(Config{NodeName: "node1", Client: cs, CDIDir: filepath.Join(t.TempDir(), "cdi"), EVE: root, Sysfs: fakeSysfs(t),
		Assigned: func() []string { return assigned }})
	d.selection()
	ctx := context.Background()
	for _, c := range []*resourceapi.ResourceClaim{
		claim("0b4d0c2e-7a35-4f0e-a1b2-111111111111", "c1", "com1", "p1"),
		claim("0b4d0c2e-7a35-4f0e-a1b2-222222222222", "c2", "modem", "p2"),
	} {
		if res, _ := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c}); res[c.UID].Err != nil {
			t.Fatal(res[c.UID].Err)
		}
	}
	d.evictWithdrawn(ctx)
	if n := countEvictions(cs); n != 0 {
		t.Fatalf("%d evictions while everything is assigned", n)
	}
	assigned = []string{"modem"}
	sel := d.selection()
	if len(sel.Devices) != 1 || len(d.resources(sel.Devices).Pools["node1"].Slices[0].Devices) != 1 {
		t.Fatalf("slice after withdrawal: %+v", sel.Devices)
	}
	d.evictWithdrawn(ctx)
	d.evictWithdrawn(ctx) // a second round: one Event per pod
	var evicted []string
	for _, a := range cs.Actions() {
		if a.GetVerb() == "create" && a.GetSubresource() == "eviction" {
			evicted = append(evicted, a.(k8stesting.CreateAction).GetObject().(*policyv1.Eviction).Name)
		}
	}
	if len(evicted) == 0 || evicted[0] != "p1" {
		t.Fatalf("evictions %v", evicted)
	}
	for _, n := range evicted {
		if n != "p1" {
			t.Fatalf("evicted %s, which holds a device still assigned", n)
		}
	}
	evs, _ := cs.CoreV1().Events("default").List(ctx, metav1.ListOptions{})
	if len(evs.Items) != 1 || evs.Items[0].Reason != ReasonDeviceWithdrawn || evs.Items[0].InvolvedObject.Name != "p1" ||
		!strings.Contains(evs.Items[0].Message, "COM1") {
		t.Fatalf("events %+v", evs.Items)
	}
}

func countEvictions(cs *fake.Clientset) int {
	n := 0
	for _, a := range cs.Actions() {
		if a.GetSubresource() == "eviction" {
			n++
		}
	}
	return n
}
