package podnet

import (
	"net"
	"net/netip"
	"sort"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/lf-edge/evelet/internal/netnstest"
)

func routesByProto(t *testing.T) map[string]netlink.RouteProtocol {
	t.Helper()
	rs, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]netlink.RouteProtocol{}
	for _, r := range rs {
		if r.Dst != nil && r.Gw != nil {
			out[r.Dst.String()+" via "+r.Gw.String()] = r.Protocol
		}
	}
	return out
}

func keys(m map[string]netlink.RouteProtocol) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestSyncHostGWRoutesInNetns(t *testing.T) {
	netnstest.Run(t, func() {
		link := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "evhg0"}}
		if err := netlink.LinkAdd(link); err != nil {
			t.Fatal(err)
		}
		addr, _ := netlink.ParseAddr("10.250.0.11/24")
		if err := netlink.AddrAdd(link, addr); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
		name, onLink, err := OnLink(netip.MustParseAddr("10.250.0.11"))
		if err != nil || name != "evhg0" || len(onLink) != 1 || onLink[0] != netip.MustParsePrefix("10.250.0.0/24") {
			t.Fatalf("OnLink: %s %v %v", name, onLink, err)
		}
		if _, _, err := OnLink(netip.MustParseAddr("10.250.0.99")); err == nil {
			t.Fatal("OnLink found a link for an address nobody holds")
		}
		// Someone else's route (the owner's, protocol static): never touched.
		_, foreign, _ := net.ParseCIDR("10.244.99.0/24")
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: foreign,
			Gw: net.ParseIP("10.250.0.99"), Protocol: netlink.RouteProtocol(4)}); err != nil {
			t.Fatal(err)
		}
		r := func(dst, via string) HostGWRoute {
			return HostGWRoute{Dst: netip.MustParsePrefix(dst), Via: netip.MustParseAddr(via), Node: "n"}
		}
		if err := SyncHostGWRoutes("evhg0", []HostGWRoute{r("10.244.22.0/24", "10.250.0.12"), r("10.244.23.0/24", "10.250.0.13")}); err != nil {
			t.Fatal(err)
		}
		got := routesByProto(t)
		if got["10.244.22.0/24 via 10.250.0.12"] != RouteProtocol || got["10.244.23.0/24 via 10.250.0.13"] != RouteProtocol ||
			got["10.244.99.0/24 via 10.250.0.99"] != 4 || len(got) != 3 {
			t.Fatalf("routes after the first sync: %v", got)
		}
		// Node 3 left, node 2 moved to another address.
		if err := SyncHostGWRoutes("evhg0", []HostGWRoute{r("10.244.22.0/24", "10.250.0.22")}); err != nil {
			t.Fatal(err)
		}
		if got := routesByProto(t); len(got) != 2 || got["10.244.22.0/24 via 10.250.0.22"] != RouteProtocol || got["10.244.99.0/24 via 10.250.0.99"] != 4 {
			t.Fatalf("routes after the second sync: %v", keys(got))
		}
		if err := RemoveHostGWRoutes(); err != nil {
			t.Fatal(err)
		}
		if got := routesByProto(t); len(got) != 1 || got["10.244.99.0/24 via 10.250.0.99"] != 4 {
			t.Fatalf("routes after removal: %v", keys(got))
		}
	})
}
