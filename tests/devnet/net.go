package devnet

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// Defaults of NetOptions.
const (
	DefaultBridge = "evdnet0"
	DefaultCIDR   = "10.250.0.0/24"
	DefaultPrefix = "evdev"
)

// NetOptions shape the test network. The zero value is the default.
type NetOptions struct {
	// Bridge is the host bridge's name (default DefaultBridge).
	Bridge string
	// CIDR is the network's subnet, IPv4, at least a /24 (default
	// DefaultCIDR). The host gets .1, device n gets .(10+n).
	CIDR string
	// Prefix names what each device has on the host (default
	// DefaultPrefix): device n's network namespace and kubelet cgroup
	// root are "<prefix>-<n>", its host-side veth "<prefix><n>h", its
	// directory /tmp/<prefix>-<n>-*.
	Prefix string
}

// Net is the host side of the devices' network: one Linux bridge that owns
// the host address. Every Device's veth is a port of it.
type Net struct {
	bridge string
	subnet *net.IPNet
	hostIP net.IP
	prefix string
}

// NewNet creates the bridge with the host address and brings it up. A
// bridge of that name left by a killed test run is removed first: the name
// belongs to this harness.
func NewNet(o NetOptions) (*Net, error) {
	if o.Bridge == "" {
		o.Bridge = DefaultBridge
	}
	if o.CIDR == "" {
		o.CIDR = DefaultCIDR
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if len(o.Prefix) > 10 {
		return nil, fmt.Errorf("devnet: prefix %q is longer than 10 characters (veth names)", o.Prefix)
	}
	if len(o.Bridge) > 15 {
		return nil, fmt.Errorf("devnet: bridge name %q is longer than 15 characters", o.Bridge)
	}
	_, subnet, err := net.ParseCIDR(o.CIDR)
	if err != nil {
		return nil, fmt.Errorf("devnet: %w", err)
	}
	if ones, bits := subnet.Mask.Size(); bits != 32 || ones > 24 {
		return nil, fmt.Errorf("devnet: CIDR %s: want IPv4, /24 or larger", o.CIDR)
	}
	n := &Net{bridge: o.Bridge, subnet: subnet, hostIP: nthIP(subnet, 1), prefix: o.Prefix}
	if old, err := netlink.LinkByName(n.bridge); err == nil {
		if err := netlink.LinkDel(old); err != nil {
			return nil, fmt.Errorf("devnet: removing stale bridge %s: %w", n.bridge, err)
		}
	}
	// Another interface holding an address or a route in the subnet would
	// take the devices' replies (the host answers from whichever link the
	// route picks): refuse in one line instead of timing out later.
	if err := subnetFree(subnet); err != nil {
		return nil, fmt.Errorf("devnet: %w", err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.bridge}}
	if err := netlink.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("devnet: creating bridge %s: %w", n.bridge, err)
	}
	fail := func(err error) (*Net, error) {
		netlink.LinkDel(br)
		return nil, fmt.Errorf("devnet: bridge %s: %w", n.bridge, err)
	}
	if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: &net.IPNet{IP: n.hostIP, Mask: subnet.Mask}}); err != nil {
		return fail(err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fail(err)
	}
	return n, nil
}

// subnetFree fails, naming the interface, when any link of the host's
// network namespace has an address in subnet or a route that overlaps it.
func subnetFree(subnet *net.IPNet) error {
	overlaps := func(o *net.IPNet) bool { return o != nil && (subnet.Contains(o.IP) || o.Contains(subnet.IP)) }
	name := func(idx int) string {
		if l, err := netlink.LinkByIndex(idx); err == nil {
			return l.Attrs().Name
		}
		return fmt.Sprintf("link #%d", idx)
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing the host's addresses: %w", err)
	}
	for _, a := range addrs {
		if subnet.Contains(a.IP) {
			return fmt.Errorf("subnet %s is in use on this host: interface %s has %s; remove it (ip addr del %s dev %s) or give NetOptions.CIDR another subnet",
				subnet, name(a.LinkIndex), a.IPNet, a.IPNet, name(a.LinkIndex))
		}
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing the host's routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil && overlaps(r.Dst) && r.Dst.String() != "0.0.0.0/0" {
			return fmt.Errorf("subnet %s is in use on this host: a route to %s via interface %s; remove it or give NetOptions.CIDR another subnet",
				subnet, r.Dst, name(r.LinkIndex))
		}
	}
	return nil
}

// HostIP is the host's address on the bridge (.1): where devices reach the
// control plane.
func (n *Net) HostIP() string { return n.hostIP.String() }

// Bridge is the bridge's name.
func (n *Net) Bridge() string { return n.bridge }

// deviceIP is device idx's address (.10+idx) with the network's mask.
func (n *Net) deviceIP(idx int) *net.IPNet {
	return &net.IPNet{IP: nthIP(n.subnet, 10+idx), Mask: n.subnet.Mask}
}

// Close deletes the bridge. Devices must be closed first (their veths go
// with their namespaces; a port still attached is simply detached).
func (n *Net) Close() error {
	link, err := netlink.LinkByName(n.bridge)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("devnet: %w", err)
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("devnet: deleting bridge %s: %w", n.bridge, err)
	}
	return nil
}

// nthIP is the subnet's address number i (IPv4).
func nthIP(subnet *net.IPNet, i int) net.IP {
	ip := make(net.IP, 4)
	copy(ip, subnet.IP.To4())
	v := uint32(ip[0])<<24 | uint32(ip[1])<<16 | uint32(ip[2])<<8 | uint32(ip[3])
	v += uint32(i)
	return net.IPv4(byte(v>>24), byte(v>>16), byte(v>>8), byte(v)).To4()
}
