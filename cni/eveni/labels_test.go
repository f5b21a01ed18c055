package eveni

import (
	"reflect"
	"strings"
	"testing"

	"github.com/lf-edge/evelet/eve/pubsub"
	"k8s.io/apimachinery/pkg/util/validation"
)

func TestLabelName(t *testing.T) {
	for in, want := range map[string]string{
		"lan":                          "lan",
		"Shop Floor LAN (vlan 7)":      "shop-floor-lan--vlan-7",
		"--x--":                        "x",
		"ÜberNet":                      "bernet",
		"":                             uuidLocal,
		"!!!":                          uuidLocal,
		strings.Repeat("a", 62) + "-b": strings.Repeat("a", 62),
	} {
		got := LabelName(in, uuidLocal)
		if got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
		if errs := validation.IsQualifiedName(LabelPrefix + got); len(errs) != 0 {
			t.Errorf("%q: %q is not a valid label key: %v", in, got, errs)
		}
	}
}

func TestNodeLabels(t *testing.T) {
	lan, ext, down := localNI(uuidLocal, "LAN"), localNI(uuidSwitch, "ext"), localNI(uuidOther, "down")
	ext.Type = pubsub.NetworkInstanceTypeSwitch
	down.Activated = false
	nis := map[string]pubsub.NetworkInstanceStatus{uuidLocal: lan, uuidSwitch: ext, uuidOther: down}
	got := NodeLabels(nis, []Grant{{NetworkInstance: uuidLocal}, {NetworkInstance: "down"}})
	want := map[string]string{LabelPrefix + "lan": "true"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%v, want %v (ext not granted, down not activated)", got, want)
	}
}
