package devnet

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// MoveAddress gives the running device another address on its link, as a
// DHCP renewal or an LTE reattach does: eth0 loses its address (and with it
// the default route) and gets the network's address number hostNum
// (10.250.0.<hostNum>), and the default route via the host comes back.
// Later boots keep the new address. It returns the new address.
func (d *Device) MoveAddress(hostNum int) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	to := &net.IPNet{IP: nthIP(d.net.subnet, hostNum), Mask: d.net.subnet.Mask}
	ns, err := netns.GetFromName(d.nsName)
	if err != nil {
		return "", fmt.Errorf("devnet: netns %s: %w", d.nsName, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return "", fmt.Errorf("devnet: netlink in %s: %w", d.nsName, err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return "", fmt.Errorf("devnet: eth0 in %s: %w", d.nsName, err)
	}
	// The old one first: deleting a primary address would take a
	// secondary one of the same subnet with it.
	if err := h.AddrDel(eth0, &netlink.Addr{IPNet: d.ip}); err != nil {
		return "", fmt.Errorf("devnet: removing %s: %w", d.ip, err)
	}
	if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: to}); err != nil {
		return "", fmt.Errorf("devnet: adding %s: %w", to, err)
	}
	if err := h.RouteReplace(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: d.net.hostIP}); err != nil {
		return "", fmt.Errorf("devnet: default route in %s: %w", d.nsName, err)
	}
	d.ip = to
	return to.IP.String(), nil
}
