package nodedns

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultLinkName is the interface that carries the address.
const DefaultLinkName = "evelet-dns0"

// linkAlias marks the interface as evelet's (IFLA_IFALIAS): a link of
// that name without it belongs to someone else and is never touched.
const linkAlias = "evelet node-local DNS"

// EnsureLink creates (or adopts) the interface name, up, holding exactly
// addr/32: pods route to it through their default gateway and the host
// delivers locally, as NodeLocal DNSCache does. It is a dummy interface,
// or, on a kernel built without dummy (CONFIG_DUMMY; the project's test
// machines lack it), a bridge with no ports, which behaves the same for a
// local address.
func EnsureLink(name, addr string) error {
	ip := net.ParseIP(addr).To4()
	if ip == nil {
		return fmt.Errorf("node DNS address %q is not IPv4", addr)
	}
	link, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		if link, err = createLink(name); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("look up %s: %w", name, err)
	case link.Attrs().Alias != linkAlias:
		return fmt.Errorf("interface %s exists and is not evelet's (no %q alias); not touching it", name, linkAlias)
	}
	want := &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	have := false
	for _, a := range addrs {
		if a.IPNet.String() == want.String() {
			have = true
			continue
		}
		if a.IP.IsLinkLocalUnicast() && a.IP.To4() == nil {
			continue // the kernel's own IPv6 link-local address
		}
		// An address left by an older configuration: only ours live here.
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("remove stale address %s from %s: %w", a.IPNet, name, err)
		}
	}
	if !have {
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: want}); err != nil {
			return fmt.Errorf("add %s to %s: %w", want, name, err)
		}
	}
	return netlink.LinkSetUp(link)
}

func createLink(name string) (netlink.Link, error) {
	la := netlink.NewLinkAttrs()
	la.Name = name
	err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: la})
	if errors.Is(err, unix.EOPNOTSUPP) {
		err = netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la})
	}
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	link, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetAlias(link, linkAlias)
	}
	if err != nil {
		_ = netlink.LinkDel(&netlink.Dummy{LinkAttrs: la})
		return nil, fmt.Errorf("mark %s as evelet's: %w", name, err)
	}
	return netlink.LinkByName(name)
}

// RemoveLink deletes the interface (and with it its address and local
// route); a missing one is fine, one that is not evelet's stays.
func RemoveLink(name string) error {
	link, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if link.Attrs().Alias != linkAlias {
		return fmt.Errorf("interface %s is not evelet's; not removing it", name)
	}
	return netlink.LinkDel(link)
}
