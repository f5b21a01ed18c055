package agent

import (
	"context"
	"encoding/json"
	"os"
	"reflect"
	"testing"

	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/cni/eveni"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestSyncNILabelsTouchesOnlyItsPrefix(t *testing.T) {
	cs := fake.NewSimpleClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "dev", Labels: map[string]string{
		"kubernetes.io/hostname":       "dev",
		eveni.LabelPrefix + "old":      "true",
		eveni.LabelPrefix + "lan":      "false",
		"example.com/owner-set-things": "x",
	}}})
	want := map[string]string{eveni.LabelPrefix + "lan": "true", eveni.LabelPrefix + "ext": "true"}
	if err := SyncNILabels(context.Background(), cs, "dev", want); err != nil {
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
	if err := SyncNILabels(context.Background(), cs, "nope", want); err == nil {
		t.Fatal("a missing node is an error (retried later)")
	}
}

// TestEveNISettingsFollowOwner: the plugin's settings file lists exactly
// the owner's NIs, none by default.
func TestEveNISettingsFollowOwner(t *testing.T) {
	h := newHarness(t, nil, nil)
	h.start()
	read := func() eveni.Settings {
		var s eveni.Settings
		b, err := os.ReadFile(h.a.cfg.EveNISettingsFile())
		if err == nil {
			err = json.Unmarshal(b, &s)
		}
		if err != nil {
			return eveni.Settings{}
		}
		return s
	}
	h.eventually("settings with no NI", func() bool {
		s := read()
		return s.StateDir != "" && s.EVERun == "/run" && s.Allowed != nil && len(s.Allowed) == 0
	})
	h.send(intent.Update{ConfigItems: map[string]string{"evelet.policy.network-instances": "lan=10.1.0.200-10.1.0.210,ext"}})
	h.eventually("settings with lan and ext", func() bool {
		s := read()
		return len(s.Allowed) == 2 && s.Allowed[0].NetworkInstance == "lan" && s.Allowed[0].ReservedEnd.String() == "10.1.0.210" &&
			s.Allowed[1].NetworkInstance == "ext" && s.Allowed[1].ReservedStart == nil
	})
}
