package policy

import (
	"reflect"
	"strings"
	"testing"
)

func TestNetworkInstancesKnob(t *testing.T) {
	p, errs := FromConfigItems(map[string]string{
		KeyNetworkInstances: " lan = 10.1.0.200 - 10.1.0.220 , 3b1c5f4e-0000-4000-8000-000000000001,ext, lan=10.1.0.1-10.1.0.2, Shop Floor 2 ",
	})
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	want := []string{"lan=10.1.0.200-10.1.0.220", "3b1c5f4e-0000-4000-8000-000000000001", "ext", "lan=10.1.0.1-10.1.0.2", "Shop Floor 2"}
	if !reflect.DeepEqual(p.AllowedNetworkInstances, want) {
		t.Fatalf("entries %q, want %q", p.AllowedNetworkInstances, want)
	}
	g := p.NetworkInstanceGrants()
	if len(g) != 4 || g[0].String() != "lan=10.1.0.200-10.1.0.220" || g[2].ReservedStart != nil {
		t.Fatalf("grants %v: want four, the duplicate lan dropped, ext without a range", g)
	}
	if p.Clone().AllowedNetworkInstances[0] != want[0] {
		t.Fatal("clone lost the entries")
	}
}

func TestNetworkInstancesKnobDefaultsToNone(t *testing.T) {
	if g := Default().NetworkInstanceGrants(); len(g) != 0 {
		t.Fatalf("default grants %v, want none", g)
	}
}

func TestNetworkInstancesKnobRefusals(t *testing.T) {
	for _, v := range []string{
		"=10.1.0.1-10.1.0.2",
		"lan=10.1.0.9-10.1.0.2",
		"lan=10.1.0.1",
		"lan=fd00::1-fd00::2",
		"lan=x-y",
	} {
		p, errs := FromConfigItems(map[string]string{KeyNetworkInstances: "ok," + v})
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), KeyNetworkInstances) {
			t.Errorf("%q: errors %v, want one naming the key", v, errs)
		}
		if len(p.AllowedNetworkInstances) != 0 {
			t.Errorf("%q: a refused list must keep its default (none), got %q", v, p.AllowedNetworkInstances)
		}
	}
}

func TestNetworkRuleKeys(t *testing.T) {
	p, errs := FromConfigItems(map[string]string{
		KeyCNIPlugins:          "eve-ni, bridge",
		KeyCNIIPAM:             "none",
		KeyCNISharedNamespaces: "net-shared",
	})
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	if !reflect.DeepEqual(p.CNIPluginTypes, []string{"eve-ni", "bridge"}) || p.CNIIPAMTypes == nil || len(p.CNIIPAMTypes) != 0 ||
		!reflect.DeepEqual(p.CNISharedNamespaces, []string{"net-shared"}) {
		t.Fatalf("got %+v", p.NetworkRules)
	}
	if d := Default(); d.CNIPluginTypes != nil || d.CNIIPAMTypes != nil || d.CNISharedNamespaces != nil {
		t.Fatalf("default %+v: unset items must leave the agent's flags in force", d.NetworkRules)
	}
	for k, v := range map[string]string{KeyCNIPlugins: "evelet-cni", KeyCNIIPAM: "../x", KeyCNISharedNamespaces: "Bad_NS"} {
		p, errs := FromConfigItems(map[string]string{k: v})
		if len(errs) != 1 || p.CNIPluginTypes != nil || p.CNIIPAMTypes != nil || p.CNISharedNamespaces != nil {
			t.Errorf("%s=%q: %v %+v, want refused and unset", k, v, errs, p.NetworkRules)
		}
	}
	c := p.Clone()
	c.CNIPluginTypes[0] = "x"
	if p.CNIPluginTypes[0] != "eve-ni" {
		t.Fatal("Clone shares the list")
	}
}
