package meta

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/lf-edge/evelet/cni/annotation"
)

// defaultRoutesIn lists the pod netns' IPv4 default routes as "via dev".
func defaultRoutesIn(t *testing.T, nsPath string) []string {
	t.Helper()
	out := ip(t, "-n", filepath.Base(nsPath), "-4", "-j", "route", "show", "default")
	var rs []struct {
		Gateway string `json:"gateway"`
		Dev     string `json:"dev"`
	}
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		t.Fatalf("ip -j route: %v: %s", err, out)
	}
	var got []string
	for _, r := range rs {
		got = append(got, r.Gateway+" "+r.Dev)
	}
	return got
}

func statusOf(t *testing.T, e *env, pod string) []annotation.NetworkStatus {
	t.Helper()
	var st []annotation.NetworkStatus
	if err := json.Unmarshal([]byte(e.pods.status("pods", pod)), &st); err != nil {
		t.Fatalf("network-status: %v", err)
	}
	return st
}

// The network a pod's "default-route" names carries its default route;
// eth0's (the default network's) is gone; network-status says so; CHECK
// watches it; DEL leaves nothing.
func TestDefaultRoute(t *testing.T) {
	e := newEnvNamed(t, "h9")
	plain := e.sandbox(t, "plain", "br2")
	if _, err := e.add(plain); err != nil {
		t.Fatal(err)
	}
	if got := defaultRoutesIn(t, plain.Netns); !reflect.DeepEqual(got, []string{"10.206.0.1 eth0"}) {
		t.Fatalf("without default-route the default network keeps the default route: %v", got)
	}
	args := e.sandbox(t, "dr", `[{"name":"br1","default-route":["10.206.11.1"]},{"name":"br2"}]`)
	if _, err := e.add(args); err != nil {
		t.Fatal(err)
	}
	if got := defaultRoutesIn(t, args.Netns); !reflect.DeepEqual(got, []string{"10.206.11.1 net1"}) {
		t.Fatalf("default routes %v, want only via 10.206.11.1 dev net1", got)
	}
	st := statusOf(t, e, "dr")
	if len(st) != 3 || !st[0].Default || st[0].DefaultRoute != nil ||
		st[1].Name != "pods/br1" || st[1].Default || !reflect.DeepEqual(st[1].DefaultRoute, []string{"10.206.11.1"}) ||
		st[2].DefaultRoute != nil {
		t.Fatalf("network-status: %+v", st)
	}
	if err := e.check(args); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	// Someone puts a default route back on eth0: CHECK says so.
	ip(t, "-n", filepath.Base(args.Netns), "route", "add", "default", "via", "10.206.0.1", "dev", "eth0", "metric", "5")
	if err := e.check(args); err == nil || !strings.Contains(err.Error(), `"default-route"`) {
		t.Fatalf("CHECK with a second default route: %v", err)
	}
	if err := e.del(args); err != nil {
		t.Fatal(err)
	}
	if err := e.del(plain); err != nil {
		t.Fatal(err)
	}
	e.requireClean(t, args)
	e.requireClean(t, plain)
}

// An empty list takes the network's own gateway(s) from its result.
func TestDefaultRouteEmptyList(t *testing.T) {
	e := newEnvNamed(t, "h9")
	args := e.sandbox(t, "empty", `[{"name":"br1"},{"name":"br2","interface":"wan0","default-route":[]}]`)
	if _, err := e.add(args); err != nil {
		t.Fatal(err)
	}
	if got := defaultRoutesIn(t, args.Netns); !reflect.DeepEqual(got, []string{"10.206.12.1 wan0"}) {
		t.Fatalf("default routes %v, want only via 10.206.12.1 dev wan0", got)
	}
	if st := statusOf(t, e, "empty"); !reflect.DeepEqual(st[2].DefaultRoute, []string{"10.206.12.1"}) {
		t.Fatalf("network-status: %+v", st)
	}
	if err := e.check(args); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := e.del(args); err != nil {
		t.Fatal(err)
	}
	e.requireClean(t, args)
}

// A gateway the network did not give, or a network without a gateway,
// fails the ADD with the reason, and everything attached is undone.
func TestDefaultRouteRefusedAndUndone(t *testing.T) {
	e := newEnvNamed(t, "h9")
	for _, c := range []struct{ name, networks, want string }{
		{"foreigngw", `[{"name":"br1","default-route":["10.206.0.1"]}]`,
			`network 1 (pods/br1, interface net1): "default-route": 10.206.0.1 is not a gateway of network pods/br1 (interface net1); its gateways: [10.206.11.1]`},
		{"nogw", `[{"name":"br1"},{"name":"mv","ips":["10.206.20.7/24"],"default-route":[]}]`,
			`"default-route": network pods/mv (interface net2) has no gateway in its result`},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := e.sandbox(t, c.name, c.networks)
			_, err := e.add(args)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "pod pods/"+c.name) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
			e.requireClean(t, args)
			if s := e.pods.status("pods", c.name); s != "" {
				t.Fatalf("network-status written for a failed ADD: %s", s)
			}
		})
	}
}

// The claim is per IP family of the gateways: an IPv6 gateway moves the
// IPv6 default route and leaves eth0's IPv4 one alone.
func TestDefaultRouteIPv6OnlyMovesIPv6(t *testing.T) {
	e := newEnvNamed(t, "h9")
	e.addNAD(t, "br6", fmt.Sprintf(`{"cniVersion":"1.0.0","name":"h6-%s-br6","type":"bridge","bridge":"h6br6",
	  "ipam":{"type":"host-local","subnet":"fd00:206:6::/64","gateway":"fd00:206:6::1"}}`, e.id))
	t.Cleanup(func() { os.RemoveAll(filepath.Join("/var/lib/cni/networks", "h6-"+e.id+"-br6")) })
	args := e.sandbox(t, "six", `[{"name":"br6","default-route":["fd00:206:6::1"]}]`)
	if _, err := e.add(args); err != nil {
		t.Fatal(err)
	}
	if got := defaultRoutesIn(t, args.Netns); !reflect.DeepEqual(got, []string{"10.206.0.1 eth0"}) {
		t.Fatalf("IPv4 default routes %v, want eth0's untouched", got)
	}
	out := ip(t, "-n", filepath.Base(args.Netns), "-6", "route", "show", "default")
	if f := strings.Fields(out); len(f) < 5 || f[2] != "fd00:206:6::1" || f[4] != "net1" || strings.Count(out, "default") != 1 {
		t.Fatalf("IPv6 default routes %q, want only via fd00:206:6::1 dev net1", out)
	}
	if err := e.check(args); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := e.del(args); err != nil {
		t.Fatal(err)
	}
	e.requireClean(t, args)
}

// The AddedInterface text is multus's: interface, CIDR addresses, network.
func TestAddedInterfaceMessage(t *testing.T) {
	res := &types100.Result{CNIVersion: "1.0.0", IPs: []*types100.IPConfig{
		{Address: net.IPNet{IP: net.ParseIP("10.1.1.5").To4(), Mask: net.CIDRMask(24, 32)}},
		{Address: net.IPNet{IP: net.ParseIP("fd00::5"), Mask: net.CIDRMask(64, 128)}},
	}}
	if got, want := addedInterfaceMessage("net1", "default/macvlan-conf", res), "Add net1 [10.1.1.5/24,fd00::5/64] from default/macvlan-conf"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
