package podnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
)

// mainTable is the kernel's main routing table (RT_TABLE_MAIN).
const mainTable = 254

// RouteProtocol marks the host-gw routes evelet makes (the rtnetlink
// protocol field; 0xe7 is unassigned in iproute2's rt_protos), so a sync
// and the removal on leave find exactly evelet's routes and no one else's.
const RouteProtocol netlink.RouteProtocol = 0xe7

// HostGWRoute sends one node's pods via that node, as flannel's host-gw
// backend does (docs/pod-network.md: the fallback while flannel is not
// linked).
type HostGWRoute struct {
	Dst  netip.Prefix // the other node's podCIDR
	Via  netip.Addr   // its InternalIP, on the device's own link
	Node string
}

// HostGWRoutes are the routes to every other Node's podCIDRs whose
// InternalIP of that family lies in one of onLink (the prefixes of the
// device's uplink): host-gw only works between hosts on one L2 link;
// nodes elsewhere need routing in the network or an overlay, and get no
// route. A podCIDR overlapping one of the device's own is skipped (the
// cluster allocated it twice; a route would steal the device's pods).
func HostGWRoutes(self string, own, onLink []netip.Prefix, nodes []corev1.Node) []HostGWRoute {
	var out []HostGWRoute
	for i := range nodes {
		n := &nodes[i]
		if n.Name == self {
			continue
		}
		cidrs, err := PodCIDRs(n)
		if err != nil {
			continue
		}
		for _, c := range cidrs {
			if overlapsAny(c, own) {
				continue
			}
			if via, ok := internalIPOnLink(n, c.Addr().Is4(), onLink); ok {
				out = append(out, HostGWRoute{Dst: c, Via: via, Node: n.Name})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dst.String() < out[j].Dst.String() })
	return out
}

func overlapsAny(p netip.Prefix, list []netip.Prefix) bool {
	for _, q := range list {
		if p.Overlaps(q) {
			return true
		}
	}
	return false
}

func internalIPOnLink(n *corev1.Node, v4 bool, onLink []netip.Prefix) (netip.Addr, bool) {
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil || ip.Is4() != v4 {
			continue
		}
		for _, l := range onLink {
			if l.Contains(ip) {
				return ip, true
			}
		}
	}
	return netip.Addr{}, false
}

// OnLink finds the link that holds ip (the node's InternalIP) and the
// prefixes on it: the device's uplink, where host-gw routes go.
func OnLink(ip netip.Addr) (link string, onLink []netip.Prefix, err error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return "", nil, fmt.Errorf("host-gw: addresses: %w", err)
	}
	index := -1
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
			index = a.LinkIndex
		}
	}
	if index < 0 {
		return "", nil, fmt.Errorf("host-gw: no link holds %s", ip)
	}
	l, err := netlink.LinkByIndex(index)
	if err != nil {
		return "", nil, fmt.Errorf("host-gw: link of %s: %w", ip, err)
	}
	for _, a := range addrs {
		if a.LinkIndex != index {
			continue
		}
		addr, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		if p, err := addr.Unmap().Prefix(ones); err == nil && !p.Addr().IsLinkLocalUnicast() {
			onLink = append(onLink, p)
		}
	}
	return l.Attrs().Name, onLink, nil
}

// SyncHostGWRoutes makes evelet's routes in the main table exactly want,
// through link: wanted ones replaced in place, evelet's others deleted.
// Routes of any other protocol are never touched.
func SyncHostGWRoutes(link string, want []HostGWRoute) error {
	l, err := netlink.LinkByName(link)
	if err != nil {
		return fmt.Errorf("host-gw routes: link %s: %w", link, err)
	}
	keep := map[string]bool{}
	var errs []error
	for _, r := range want {
		nr := &netlink.Route{
			LinkIndex: l.Attrs().Index,
			Dst:       prefixNet(r.Dst),
			Gw:        net.IP(r.Via.AsSlice()),
			Protocol:  RouteProtocol,
		}
		if err := netlink.RouteReplace(nr); err != nil {
			errs = append(errs, fmt.Errorf("host-gw route %s via %s (node %s): %w", r.Dst, r.Via, r.Node, err))
			continue
		}
		keep[r.Dst.String()] = true
	}
	have, err := ownRoutes()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, r := range have {
		if r.Dst != nil && keep[r.Dst.String()] {
			continue
		}
		if err := netlink.RouteDel(&r); err != nil {
			errs = append(errs, fmt.Errorf("host-gw route %s: %w", r.Dst, err))
		}
	}
	return errors.Join(errs...)
}

// RemoveHostGWRoutes deletes every route evelet made (on leave).
func RemoveHostGWRoutes() error {
	have, err := ownRoutes()
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range have {
		if err := netlink.RouteDel(&r); err != nil {
			errs = append(errs, fmt.Errorf("host-gw route %s: %w", r.Dst, err))
		}
	}
	return errors.Join(errs...)
}

func ownRoutes() ([]netlink.Route, error) {
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: RouteProtocol, Table: mainTable},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("host-gw routes: list: %w", err)
	}
	return rs, nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
