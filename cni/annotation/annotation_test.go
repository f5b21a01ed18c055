package annotation

import (
	"reflect"
	"strings"
	"testing"
)

// Spec sections are cited by their titles in the NPWG "Kubernetes Network
// Custom Resource Definition De-facto Standard" v1.3.

func TestParseShortForm(t *testing.T) {
	cases := []struct {
		name, in string
		want     []Selection
	}{
		// "Network Attachment Selection Annotation": comma-delimited names.
		{"name only", "foo", []Selection{{Name: "foo", Namespace: "pods", Interface: "net1"}}},
		{"namespace/name", "other/foo", []Selection{{Name: "foo", Namespace: "other", Interface: "net1"}}},
		{"name@ifname", "foo@data0", []Selection{{Name: "foo", Namespace: "pods", Interface: "data0"}}},
		{"namespace/name@ifname", "other/foo@data0", []Selection{{Name: "foo", Namespace: "other", Interface: "data0"}}},
		{"list with spaces; interfaces by position", " foo , bar@x1, baz ", []Selection{
			{Name: "foo", Namespace: "pods", Interface: "net1"},
			{Name: "bar", Namespace: "pods", Interface: "x1"},
			{Name: "baz", Namespace: "pods", Interface: "net3"},
		}},
		// The same network twice is allowed on different interfaces.
		{"same network twice", "foo,foo", []Selection{
			{Name: "foo", Namespace: "pods", Interface: "net1"},
			{Name: "foo", Namespace: "pods", Interface: "net2"},
		}},
		{"dotted NAD name", "a.b-c", []Selection{{Name: "a.b-c", Namespace: "pods", Interface: "net1"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Parse(c.in, "pods", "eth0")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %+v\nwant %+v", got, c.want)
			}
		})
	}
}

func TestParseEmpty(t *testing.T) {
	for _, in := range []string{"", "  ", "\n"} {
		got, err := Parse(in, "pods", "eth0")
		if err != nil || got != nil {
			t.Fatalf("%q: got %v, %v", in, got, err)
		}
	}
}

func TestParseJSONForm(t *testing.T) {
	// "Network Selection Element": every key the spec names.
	in := `[
	  {"name":"a"},
	  {"name":"b","namespace":"other","interface":"data0"},
	  {"name":"c","mac":"02:00:00:00:00:0c","ips":["10.1.1.11/24","fd00::11/64","10.2.2.2"]},
	  {"name":"d","default-route":["10.1.1.1"]},
	  {"name":"e","cni-args":{"k":"v","n":1}},
	  {"name":"f","portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]},
	  {"name":"g","bandwidth":{"ingressRate":1000,"ingressBurst":100,"egressRate":2000,"egressBurst":200}},
	  {"name":"h","infiniband-guid":"c2:11:22:33:44:55:66:77"}
	]`
	got, err := Parse(in, "pods", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	want := []Selection{
		{Name: "a", Namespace: "pods", Interface: "net1"},
		{Name: "b", Namespace: "other", Interface: "data0"},
		{Name: "c", Namespace: "pods", Interface: "net3", MAC: "02:00:00:00:00:0c", IPs: []string{"10.1.1.11/24", "fd00::11/64", "10.2.2.2"}},
		{Name: "d", Namespace: "pods", Interface: "net4", DefaultRoute: []string{"10.1.1.1"}, HasDefaultRoute: true},
		{Name: "e", Namespace: "pods", Interface: "net5", CNIArgs: map[string]any{"k": "v", "n": float64(1)}},
		{Name: "f", Namespace: "pods", Interface: "net6", PortMappings: []PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}},
		{Name: "g", Namespace: "pods", Interface: "net7", Bandwidth: &Bandwidth{1000, 100, 2000, 200}},
		{Name: "h", Namespace: "pods", Interface: "net8", InfinibandGUID: "c2:11:22:33:44:55:66:77"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if got[1].Ref() != "other/b" {
		t.Fatalf("Ref = %q", got[1].Ref())
	}
}

// An empty "default-route" list still claims the default route (spec
// 4.1.2.1.9: "This list may be empty"); null or an absent key does not.
func TestParseDefaultRouteClaim(t *testing.T) {
	got, err := Parse(`[{"name":"a","default-route":[]},{"name":"b","default-route":null},{"name":"c"}]`, "pods", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if !got[0].HasDefaultRoute || got[1].HasDefaultRoute || got[2].HasDefaultRoute {
		t.Fatalf("claims: %v %v %v, want true false false", got[0].HasDefaultRoute, got[1].HasDefaultRoute, got[2].HasDefaultRoute)
	}
	if got, err := Parse("a,b", "pods", "eth0"); err != nil || got[0].HasDefaultRoute || got[1].HasDefaultRoute {
		t.Fatalf("comma form: %+v %v", got, err)
	}
}

// Interop with the spec and multus: "[]" is no extra network;
// "ipam-claim-reference" and extension keys (with a '.') are accepted and
// reported as ignored.
func TestParseInterop(t *testing.T) {
	if sels, err := Parse("[]", "pods", "eth0"); err != nil || len(sels) != 0 {
		t.Fatalf(`"[]": %v %v, want no network`, sels, err)
	}
	sels, err := Parse(`[{"name":"a","ipam-claim-reference":{"name":"c"},"example.com/x":1},{"name":"b"}]`, "pods", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if len(sels) != 2 || !reflect.DeepEqual(sels[0].Ignored, []string{"example.com/x", "ipam-claim-reference"}) || sels[1].Ignored != nil || sels[1].Interface != "net2" {
		t.Fatalf("got %+v", sels)
	}
	// Still strict about everything else, and about keys in two cases.
	if _, err := Parse(`[{"name":"a","ipam-claim-reference":"c","interfce":"x"}]`, "pods", "eth0"); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Fatalf("typo beside an ignored key: %v", err)
	}
	if _, err := Parse(`[{"name":"a","ipam-claim-reference":"c","mac":"02:00:00:00:00:01","MAC":"02:00:00:00:00:02"}]`, "pods", "eth0"); err == nil || !strings.Contains(err.Error(), "same key") {
		t.Fatalf("duplicate keys beside an ignored key: %v", err)
	}
}

func TestParseRefusals(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"malformed JSON", `[{"name":"a"`, "not a valid JSON list"},
		{"JSON object, not list", `{"name":"a"}`, "must be a list"},
		{"JSON trailing data", `[{"name":"a"}] x`, "trailing data"},
		{"JSON missing name", `[{"interface":"x"}]`, `no "name"`},
		{"JSON unknown key", `[{"name":"a","interfce":"x"}]`, "unknown field"},
		{"JSON wrong type", `[{"name":"a","ips":"10.0.0.1"}]`, "not a valid JSON list"},
		{"empty element", "a,,b", "element 2 of the comma-separated list is empty"},
		{"empty namespace", "/a", "empty namespace"},
		{"empty ifname", "a@", "empty interface name"},
		{"no name", "ns/@x", "no network name"},
		{"bad name chars", "Foo_bar", "invalid network name"},
		{"name with slash", "a/b/c", "invalid network name"},
		{"bad namespace", `[{"name":"a","namespace":"a.b"}]`, "invalid namespace"},
		{"ifname too long", "a@abcdefghijklmnop", "longer than 15"},
		{"ifname with slash", `[{"name":"a","interface":"x/y"}]`, "contains '/'"},
		{"ifname with colon", "a@x:1", "contains ':'"},
		{"ifname with space", `[{"name":"a","interface":"x y"}]`, "white space"},
		{"ifname dotdot", "a@..", "not allowed"},
		{"ifname lo", "a@lo", "loopback"},
		{"duplicate ifname", "a@x,b@x", `interface "x" is already used by network 1 ("a")`},
		{"generated ifname collides", "a@net2,b", `interface "net2" is already used by network 1`},
		{"default ifname taken", "a@eth0", "already used by the default network"},
		{"bad mac", `[{"name":"a","mac":"zz"}]`, "invalid mac"},
		{"multicast mac", `[{"name":"a","mac":"01:00:5e:00:00:01"}]`, "multicast"},
		{"bad ip", `[{"name":"a","ips":["10.0.0.300/24"]}]`, "invalid ips entry"},
		{"bad gateway", `[{"name":"a","default-route":["x"]}]`, "invalid default-route"},
		{"two default-route claims", `[{"name":"a","default-route":["10.0.0.1"]},{"name":"b","default-route":[]}]`, `network 1 ("a") and network 2 ("b") both set "default-route"`},
		{"default-route not a list", `[{"name":"a","default-route":"10.0.0.1"}]`, "not a valid JSON list"},
		{"bad port", `[{"name":"a","portMappings":[{"hostPort":0,"containerPort":80}]}]`, "ports must be"},
		{"bad protocol", `[{"name":"a","portMappings":[{"hostPort":1,"containerPort":80,"protocol":"icmp"}]}]`, "protocol"},
		{"negative bandwidth", `[{"name":"a","bandwidth":{"ingressRate":-1}}]`, "negative"},
		{"bad guid", `[{"name":"a","infiniband-guid":"02:00:00:00:00:01"}]`, "infiniband-guid"},
		{"too many", strings.Repeat("a,", MaxNetworks) + "a", "at most"},
		// Keys as Go decodes them: "MAC" is "mac", the last one wins.
		{"mac twice in two cases", `[{"name":"a","mac":"02:00:00:00:00:01","MAC":"02:00:00:00:00:02"}]`, `keys "mac" and "MAC" are the same key`},
		{"default-route in another case claims too", `[{"name":"a","Default-Route":["10.0.0.1"]},{"name":"b","default-route":[]}]`, `both set "default-route"`},
		// cni-args must not undo what the annotation's own keys refuse.
		{"cni-args ips", `[{"name":"a","cni-args":{"ips":["10.0.0.9/24"]}}]`, `cni-args "ips"`},
		{"cni-args mac", `[{"name":"a","cni-args":{"Mac":"02:00:00:00:00:09"}}]`, `cni-args "Mac"`},
		{"cni-args sysctl", `[{"name":"a","cni-args":{"sysctl":{"net.ipv4.conf.all.forwarding":"1"}}}]`, `cni-args "sysctl"`},
		{"cni-args promisc", `[{"name":"a","cni-args":{"promisc":true}}]`, `cni-args "promisc"`},
		{"cni-args dup keys", `[{"name":"a","cni-args":{"k":1,"K":2}}]`, `keys "k" and "K"`},
		// The bandwidth plugin refuses these on ADD and on every DEL.
		{"bandwidth rate without burst", `[{"name":"a","bandwidth":{"ingressRate":1000000,"egressRate":1000000}}]`, "ingressRate needs ingressBurst"},
		{"bandwidth burst without rate", `[{"name":"a","bandwidth":{"egressBurst":1000}}]`, "egressBurst needs egressRate"},
		{"bandwidth burst too big", `[{"name":"a","bandwidth":{"ingressRate":1,"ingressBurst":40000000000}}]`, "more than 4 GB"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(c.in, "pods", "eth0")
			if err == nil {
				t.Fatalf("%q: accepted", c.in)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%q: error %q does not contain %q", c.in, err, c.want)
			}
			if !strings.Contains(err.Error(), NetworksKey) {
				t.Fatalf("error %q does not name the annotation", err)
			}
		})
	}
}

func TestRenderStatus(t *testing.T) {
	s, err := RenderStatus([]NetworkStatus{
		{Name: "evelet-default", Interface: "eth0", IPs: []string{"10.88.0.2"}, MAC: "aa:bb:cc:dd:ee:ff", Default: true, DNS: &DNS{}},
		{Name: "pods/a", Interface: "net1", IPs: []string{"10.1.1.11"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{`"name": "evelet-default"`, `"default": true`, `"interface": "net1"`, `"ips": [`} {
		if !strings.Contains(s, w) {
			t.Fatalf("%s lacks %s", s, w)
		}
	}
	if strings.Contains(s, `"name": "pods/a",
        "interface": "net1",
        "ips": [
            "10.1.1.11"
        ],
        "default"`) {
		t.Fatal("default:false rendered")
	}
}

func FuzzParseNetworks(f *testing.F) {
	for _, s := range []string{"", "a", "ns/a@net5,b", `[{"name":"a","mac":"02:00:00:00:00:01","ips":["10.0.0.1/24"]}]`,
		`[{"name":"a","cni-args":{"x":[1,2]}}]`, "a@eth0", "a,,b", `[{"name":"a"},{"name":"b","interface":"net1"}]`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		sels, err := Parse(in, "pods", "eth0")
		if err != nil {
			return
		}
		// Whatever is accepted satisfies the invariants the plugin relies on.
		seen := map[string]bool{"eth0": true}
		for _, s := range sels {
			if s.Name == "" || s.Namespace == "" || ValidIfname(s.Interface) != nil || seen[s.Interface] {
				t.Fatalf("accepted bad selection %+v from %q", s, in)
			}
			seen[s.Interface] = true
		}
		if len(sels) > MaxNetworks {
			t.Fatalf("accepted %d networks", len(sels))
		}
	})
}
