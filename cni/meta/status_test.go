package meta

import (
	"encoding/json"
	"net"
	"reflect"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

// network-status "gateway" lists only the gateways of the pod's default
// routes through that interface (multus): not every address's gateway.
func TestNetworkStatusGatewayIsDefaultRouteOnly(t *testing.T) {
	res := func(ifname, addr, gw string, routes ...*types.Route) types.Result {
		ip, n, _ := net.ParseCIDR(addr)
		n.IP = ip
		return &types100.Result{CNIVersion: "1.0.0",
			Interfaces: []*types100.Interface{{Name: ifname, Sandbox: "/ns"}},
			IPs:        []*types100.IPConfig{{Interface: types100.Int(0), Address: *n, Gateway: net.ParseIP(gw)}},
			Routes:     routes}
	}
	dflt := &types.Route{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}
	sub := &types.Route{Dst: net.IPNet{IP: net.ParseIP("10.9.0.0").To4(), Mask: net.CIDRMask(16, 32)}}
	gws := func(rec *record, results ...types.Result) [][]string {
		s, err := networkStatus(rec, results)
		if err != nil {
			t.Fatal(err)
		}
		var st []struct {
			Gateway []string `json:"gateway"`
		}
		if err := json.Unmarshal([]byte(s), &st); err != nil {
			t.Fatal(err)
		}
		var out [][]string
		for _, e := range st {
			out = append(out, e.Gateway)
		}
		return out
	}
	rec := &record{Attachments: []attachment{{Ref: "d", IfName: "eth0", Default: true}, {Ref: "ns/a", IfName: "net1"}}}
	got := gws(rec, res("eth0", "10.88.0.2/24", "10.88.0.1", dflt), res("net1", "10.1.0.5/24", "10.1.0.1", sub))
	if !reflect.DeepEqual(got, [][]string{{"10.88.0.1"}, nil}) {
		t.Errorf("no default-route claim: %v, want eth0's default gateway only", got)
	}
	rec.Attachments[1].ClaimsDefaultRoute, rec.Attachments[1].DefaultRouteVia = true, []string{"10.1.0.1"}
	got = gws(rec, res("eth0", "10.88.0.2/24", "10.88.0.1", dflt), res("net1", "10.1.0.5/24", "10.1.0.1", sub))
	if !reflect.DeepEqual(got, [][]string{nil, {"10.1.0.1"}}) {
		t.Errorf("net1 carries the default route: %v, want only net1's", got)
	}
}
