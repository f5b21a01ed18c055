package eveni

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lf-edge/evelet/eve/pubsub"
)

func writeNI(t *testing.T, run string, st pubsub.NetworkInstanceStatus) {
	t.Helper()
	dir := pubsub.Root{Run: run}.NetworkInstanceStatusDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, st.UUID.String()+".json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func localNI(uuid, name string) pubsub.NetworkInstanceStatus {
	_, sub, _ := net.ParseCIDR("10.1.0.0/24")
	var st pubsub.NetworkInstanceStatus
	st.UUID, st.DisplayName, st.Type = pubsub.UUID(uuid), name, pubsub.NetworkInstanceTypeLocal
	st.Subnet, st.Gateway = sub, ip4("10.1.0.1")
	st.DhcpRange = pubsub.IPRange{Start: ip4("10.1.0.2"), End: ip4("10.1.0.99")}
	st.BridgeNum, st.BridgeName, st.BridgeIPAddr = 1, "bn1", ip4("10.1.0.1")
	st.Activated = true
	st.IPAssignments = map[string]pubsub.AssignedAddrs{"02:00:00:00:00:01": {IPv4Addrs: []pubsub.AssignedAddr{{Address: ip4("10.1.0.150")}}}}
	return st
}

const (
	uuidLocal  = "11111111-1111-4111-8111-111111111111"
	uuidSwitch = "22222222-2222-4222-8222-222222222222"
	uuidOther  = "33333333-3333-4333-8333-333333333333"
)

func TestResolve(t *testing.T) {
	run := t.TempDir()
	writeNI(t, run, localNI(uuidLocal, "lan"))
	sw := localNI(uuidSwitch, "ext")
	sw.Type, sw.Subnet, sw.BridgeName = pubsub.NetworkInstanceTypeSwitch, nil, "bn2"
	writeNI(t, run, sw)
	off := localNI(uuidOther, "down")
	off.Activated, off.Error = false, "port eth9 missing"
	writeNI(t, run, off)
	dup := localNI("44444444-4444-4444-8444-444444444444", "ext")
	writeNI(t, run, dup)

	rng := func(ni, a, b string) Grant {
		return Grant{NetworkInstance: ni, ReservedStart: ip4(a), ReservedEnd: ip4(b)}
	}
	set := func(g ...Grant) *Settings { return &Settings{EVERun: run, StateDir: t.TempDir(), Allowed: g} }

	if ni, err := set(rng("lan", "10.1.0.100", "10.1.0.200")).Resolve(uuidLocal); err != nil || ni.Status.BridgeName != "bn1" {
		t.Fatalf("Local NI by UUID, granted by name: %v %v", ni, err)
	}
	if ni, err := set(Grant{NetworkInstance: uuidSwitch}).Resolve(uuidSwitch); err != nil || ni.Status.Type != pubsub.NetworkInstanceTypeSwitch {
		t.Fatalf("Switch NI: %v %v", ni, err)
	}
	for _, c := range []struct {
		name, ref, want string
		s               *Settings
	}{
		{"absent", "nope", "does not exist on this device", set(Grant{NetworkInstance: "nope"})},
		{"not granted", "lan", "not given to Kubernetes", set()},
		{"other NI granted", "lan", "not given to Kubernetes", set(Grant{NetworkInstance: uuidSwitch})},
		{"not activated", "down", "not activated: port eth9 missing", set(rng("down", "10.1.0.100", "10.1.0.200"))},
		{"ambiguous name", "ext", "name one by UUID", set(Grant{NetworkInstance: "ext"})},
		{"local without range", "lan", "reserved no address range", set(Grant{NetworkInstance: "lan"})},
		{"range outside subnet", "lan", "not inside its subnet", set(rng("lan", "10.1.0.200", "10.1.1.5"))},
		{"range overlaps DhcpRange", "lan", "overlaps its DhcpRange", set(rng("lan", "10.1.0.90", "10.1.0.120"))},
	} {
		_, err := c.s.Resolve(c.ref)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
}

func TestExcluded(t *testing.T) {
	n := &NI{Status: localNI(uuidLocal, "lan")}
	for _, s := range []string{"10.1.0.0", "10.1.0.1", "10.1.0.255", "10.1.0.150"} {
		if !n.excluded(ip4(s)) {
			t.Errorf("%s must be excluded", s)
		}
	}
	if n.excluded(ip4("10.1.0.151")) {
		t.Error("10.1.0.151 is free")
	}
	if got := n.dns(); len(got) != 1 || got[0] != "10.1.0.1" {
		t.Errorf("DNS %v: no DnsServers means the gateway", got)
	}
}

func TestParseNetConf(t *testing.T) {
	c, err := ParseNetConf([]byte(`{"cniVersion":"1.1.0","name":"x","type":"eve-ni","networkInstance":"lan","runtimeConfig":{"mac":"02:00:00:00:00:09","ips":["10.1.0.120/24"]}}`))
	if err != nil || !c.requestedIPv4().Equal(ip4("10.1.0.120")) || c.SettingsFile != DefaultSettingsPath {
		t.Fatalf("%+v %v", c, err)
	}
	for _, bad := range []string{
		`{"cniVersion":"1.1.0","name":"x","type":"eve-ni"}`,
		`{"networkInstance":"lan","runtimeConfig":{"mac":"zz"}}`,
		`{"networkInstance":"lan","runtimeConfig":{"ips":["x"]}}`,
		`{"networkInstance":`,
		// Keys as Go decodes them, and paths that are not the node's file.
		`{"networkInstance":"lan","eveniConfig":"/run/evelet/eve-ni.json","eveniconfig":"../../x"}`,
		`{"networkInstance":"lan","eveniconfig":"../../persist/x.json"}`,
		`{"networkInstance":"lan","eveniConfig":"eve-ni.json"}`,
		`{"networkInstance":"lan","eveniConfig":"/run/evelet/../../persist/x.json"}`,
		`{"networkInstance":"lan","runtimeConfig":{"mac":"02:00:00:00:00:09"},"RuntimeConfig":{"mac":"02:00:00:00:00:0a"}}`,
		`{"networkInstance":"lan","runtimeConfig":{"mac":"01:00:5e:00:00:01"}}`,
	} {
		if _, err := ParseNetConf([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

// dhcp's socket in another letter case is the same key to the dhcp plugin:
// it is refused, and the node's socket replaces every case.
func TestDHCPSocketInAnyCase(t *testing.T) {
	c, err := ParseNetConf([]byte(`{"cniVersion":"1.1.0","name":"x","type":"eve-ni","networkInstance":"lan","ipam":{"type":"dhcp","daemonsocketpath":"../../run/containerd/containerd.sock"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.checkIPAM(); err == nil {
		t.Fatal("daemonsocketpath accepted")
	}
	b, err := c.ipamStdin(&Settings{DHCPSocket: "/run/evelet/dhcp.sock"})
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		IPAM struct {
			Sock string `json:"daemonSocketPath"`
		} `json:"ipam"`
	}
	if err := json.Unmarshal(b, &v); err != nil || v.IPAM.Sock != "/run/evelet/dhcp.sock" {
		t.Fatalf("dhcp would use %q (%v): %s", v.IPAM.Sock, err, b)
	}
}

// An NI zedrouter is changing is waited for (bounded): ADD gets the NI as
// it is once the change has ended, or a refusal that says why.
func TestResolveWaitsForChangeInProgress(t *testing.T) {
	run := t.TempDir()
	st := localNI(uuidLocal, "lan")
	st.ChangeInProgress = pubsub.ChangeInProgressTypeModify
	st.BridgeName = "" // mid-change: not final
	writeNI(t, run, st)
	s := &Settings{EVERun: run, Allowed: []Grant{{NetworkInstance: "lan", ReservedStart: ip4("10.1.0.200"), ReservedEnd: ip4("10.1.0.210")}}}
	waits := 0
	onChangeWait = func() {
		waits++
		if waits == 2 { // zedrouter finishes
			done := localNI(uuidLocal, "lan")
			writeNI(t, run, done)
		}
	}
	defer func() { onChangeWait = nil }()
	n, err := s.Resolve("lan")
	if err != nil || n.Status.BridgeName != "bn1" || waits != 2 {
		t.Fatalf("Resolve during a change: %+v %v after %d waits; want the NI after the change", n, err, waits)
	}

	// A change that does not end within the bound refuses the pod.
	writeNI(t, run, st)
	old := changeWait
	changeWait = 3 * changePoll
	defer func() { changeWait = old }()
	onChangeWait = nil
	if _, err := s.Resolve("lan"); err == nil || !strings.Contains(err.Error(), "ChangeInProgress=2") {
		t.Fatalf("Resolve of an NI that stays mid-change: %v", err)
	}
}
