package labels

import (
	"context"
	"reflect"
	"testing"

	"github.com/lf-edge/evelet/cni/eveni"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestSyncTouchesOnlyItsPrefix(t *testing.T) {
	cs := fake.NewSimpleClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "dev", Labels: map[string]string{
		"kubernetes.io/hostname":       "dev",
		eveni.LabelPrefix + "old":      "true",
		eveni.LabelPrefix + "lan":      "false",
		"example.com/owner-set-things": "x",
	}}})
	want := map[string]string{eveni.LabelPrefix + "lan": "true", eveni.LabelPrefix + "ext": "true"}
	if err := Sync(context.Background(), cs, "dev", want); err != nil {
		t.Fatal(err)
	}
	n, err := cs.CoreV1().Nodes().Get(context.Background(), "dev", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantAll := map[string]string{
		"kubernetes.io/hostname": "dev", "example.com/owner-set-things": "x",
		eveni.LabelPrefix + "lan": "true", eveni.LabelPrefix + "ext": "true",
	}
	if !reflect.DeepEqual(n.Labels, wantAll) {
		t.Fatalf("labels %v, want %v", n.Labels, wantAll)
	}
	if err := Sync(context.Background(), cs, "nope", want); err == nil {
		t.Fatal("a missing node is an error (retried later)")
	}
}
