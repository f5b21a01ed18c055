package dra

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/lf-edge/evelet/eve/pubsub"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
)

// BenchmarkPrepareClaim is the driver's share of a claim's preparation:
// the CDI spec written (temp-then-rename) after the other prepared claims
// are checked for the device, then unprepared again. docs/benchmarks.md.
func BenchmarkPrepareClaim(b *testing.B) {
	root := pubsub.Root{Run: b.TempDir()}
	if err := pubsub.Write(AdaptersFile(root), testAdapters()); err != nil {
		b.Fatal(err)
	}
	d := New(Config{NodeName: "node1", Client: fake.NewSimpleClientset(), CDIDir: filepath.Join(b.TempDir(), "cdi"), EVE: root,
		Sysfs: b.TempDir(), Assigned: func() []string { return []string{"COM1"} }})
	d.selection()
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := claim(fmt.Sprintf("0b4d0c2e-7a35-4f0e-a1b2-%012d", i), "c", "com1", "p")
		res, _ := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c})
		if res[c.UID].Err != nil {
			b.Fatal(res[c.UID].Err)
		}
		d.UnprepareResourceClaims(ctx, []kubeletplugin.NamespacedObject{{UID: c.UID, NamespacedName: types.NamespacedName{Namespace: "default", Name: "c"}}})
	}
}
