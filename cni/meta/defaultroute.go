package meta

import (
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// The spec's "default-route" key (4.1.2.1.9): the network a pod names
// carries its default route, and the default route is cleared from every
// other attachment, the cluster-wide default network included. The
// delegates install their routes as they like; evelet-cni then rewrites
// the pod's default routes of the families the chosen gateways belong to.
// Delegates cannot do this themselves: each sees only its own interface.

// claimIndex is the attachment that asked for the default route, or -1.
func (r *record) claimIndex() int {
	for i := range r.Attachments {
		if r.Attachments[i].ClaimsDefaultRoute {
			return i
		}
	}
	return -1
}

// resultGateways are the gateways of the attachment's sandbox interface in
// its CNI result.
func resultGateways(a *attachment, r types.Result) ([]net.IP, error) {
	if r == nil {
		return nil, nil
	}
	cur, err := types100.NewResultFromResult(r)
	if err != nil {
		return nil, fmt.Errorf("result of %s: %w", a.Ref, err)
	}
	ifIndex := -1
	for j, in := range cur.Interfaces {
		if in.Name == a.IfName && in.Sandbox != "" {
			ifIndex = j
		}
	}
	var gws []net.IP
	add := func(gw net.IP) {
		if gw != nil && !slices.ContainsFunc(gws, gw.Equal) {
			gws = append(gws, gw)
		}
	}
	for _, ip := range cur.IPs {
		if ip.Interface == nil || *ip.Interface == ifIndex || ifIndex < 0 {
			add(ip.Gateway)
		}
	}
	// Static IPAM with the pod's "ips" has no gateway on its addresses;
	// the config's routes name it.
	for _, rt := range cur.Routes {
		add(rt.GW)
	}
	return gws, nil
}

// defaultGateways picks the gateways the claiming attachment's default
// route goes through: the ones the pod listed, each of which must be a
// gateway of that network's result (a pod cannot route through an address
// the network did not give it), or all the result's gateways when the
// list is empty.
func defaultGateways(a *attachment, r types.Result) ([]net.IP, error) {
	have, err := resultGateways(a, r)
	if err != nil {
		return nil, err
	}
	if len(a.DefaultRouteGateways) == 0 {
		if len(have) == 0 {
			return nil, fmt.Errorf("\"default-route\": network %s (interface %s) has no gateway in its result to carry the default route (its IPAM sets none)", a.Ref, a.IfName)
		}
		return have, nil
	}
	var out []net.IP
	for _, s := range a.DefaultRouteGateways {
		gw := net.ParseIP(s)
		if gw == nil || !slices.ContainsFunc(have, gw.Equal) {
			return nil, fmt.Errorf("\"default-route\": %s is not a gateway of network %s (interface %s); its gateways: [%s]", s, a.Ref, a.IfName, ipList(have))
		}
		if !slices.ContainsFunc(out, gw.Equal) {
			out = append(out, gw)
		}
	}
	return out, nil
}

func ipList(ips []net.IP) string {
	var s []string
	for _, ip := range ips {
		s = append(s, ip.String())
	}
	return strings.Join(s, ", ")
}

func family(ip net.IP) int {
	if ip.To4() != nil {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}

// defaultRoutes lists the main table's default routes of a family.
func defaultRoutes(fam int) ([]netlink.Route, error) {
	rs, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: 254}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, err
	}
	var out []netlink.Route
	for _, r := range rs {
		if isDefault(r) {
			out = append(out, r)
		}
	}
	return out, nil
}

// setDefaultRoute makes gws, through ifName, the only default routes of
// their families in the pod netns. Several gateways of one family get
// metrics in their order (the spec allows an order-based metric).
func setDefaultRoute(netnsPath, ifName string, gws []net.IP) error {
	return ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		l, err := netlink.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("interface %s: %w", ifName, err)
		}
		fams := map[int]int{} // family -> next metric
		for _, gw := range gws {
			if _, ok := fams[family(gw)]; ok {
				continue
			}
			fams[family(gw)] = 0
			old, err := defaultRoutes(family(gw))
			if err != nil {
				return fmt.Errorf("listing default routes: %w", err)
			}
			for i := range old {
				if err := netlink.RouteDel(&old[i]); err != nil {
					return fmt.Errorf("removing default route %s: %w", old[i], err)
				}
			}
		}
		for _, gw := range gws {
			f := family(gw)
			bits := 32
			if f == netlink.FAMILY_V6 {
				bits = 128
			}
			dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, bits)}
			if f == netlink.FAMILY_V6 {
				dst.IP = net.IPv6zero
			}
			r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Gw: gw, Priority: fams[f]}
			if err := netlink.RouteAdd(r); err != nil {
				return fmt.Errorf("adding default route via %s dev %s: %w", gw, ifName, err)
			}
			fams[f]++
		}
		return nil
	})
}

// checkDefaultRoute verifies that the default routes of the recorded
// gateways' families are exactly those through ifName (CHECK).
func checkDefaultRoute(netnsPath, ifName string, gws []string) error {
	return ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		l, err := netlink.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("interface %s: %w", ifName, err)
		}
		want := map[int][]string{}
		for _, s := range gws {
			gw := net.ParseIP(s)
			if gw == nil {
				return fmt.Errorf("recorded default gateway %q is not an IP", s)
			}
			want[family(gw)] = append(want[family(gw)], gw.String())
		}
		for f, w := range want {
			rs, err := defaultRoutes(f)
			if err != nil {
				return err
			}
			var got []string
			for _, r := range rs {
				if r.LinkIndex != l.Attrs().Index || r.Gw == nil {
					return fmt.Errorf("default route %s is not through %s", r, ifName)
				}
				got = append(got, r.Gw.String())
			}
			slices.Sort(got)
			slices.Sort(w)
			if !slices.Equal(got, w) {
				return fmt.Errorf("default routes through %v, want through %v on %s", got, w, ifName)
			}
		}
		return nil
	})
}
