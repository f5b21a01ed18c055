package vmnet

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// dhcpServerAddr is the link-local address the DHCP responder answers from
// on each VM bridge: the guest needs a server identifier, and a /32
// link-local address routes nowhere and collides with no pod network.
var dhcpServerAddr = netip.MustParseAddr("169.254.75.10")

// Names inside the sandbox namespace; no other pod's links live there, so a
// per-interface index is unique.
func bridgeName(i int) string { return fmt.Sprintf("vmbr%d", i) }
func tapName(i int) string    { return fmt.Sprintf("vmtap%d", i) }

// handOver gives CNI interface ifc to the guest: the interface loses its
// addresses and MAC (the guest takes both), joins a new bridge with a new
// tap for QEMU, and the bridge gets the DHCP responder's address.
func handOver(path string, i int, ifc cniIface) (NIC, error) {
	h, err := handleAt(path)
	if err != nil {
		return NIC{}, err
	}
	defer h.Close()

	l, err := h.LinkByName(ifc.name)
	if err != nil {
		return NIC{}, err
	}
	mac := l.Attrs().HardwareAddr
	if len(mac) != 6 {
		return NIC{}, fmt.Errorf("interface %s has no Ethernet MAC (%q): only Ethernet interfaces can be given to a VM", ifc.name, mac)
	}
	mtu := l.Attrs().MTU
	nic := NIC{
		PodIfName: ifc.name,
		Tap:       tapName(i),
		Bridge:    bridgeName(i),
		MAC:       mac.String(),
		IPs:       ifc.ips,
		Gateway:   ifc.gateway,
		MTU:       mtu,
	}

	// The guest answers for the pod IPs now; the namespace must not.
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return NIC{}, err
	}
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() {
			continue
		}
		if err := h.AddrDel(l, &a); err != nil {
			return NIC{}, fmt.Errorf("move %s off %s: %w", a.IPNet, ifc.name, err)
		}
	}
	// Same for the MAC: the bridge must not take frames for the guest's
	// MAC as its own.
	newMAC, err := randomMAC()
	if err != nil {
		return NIC{}, err
	}
	if err := h.LinkSetDown(l); err != nil {
		return NIC{}, err
	}
	if err := h.LinkSetHardwareAddr(l, newMAC); err != nil {
		return NIC{}, fmt.Errorf("change MAC of %s: %w", ifc.name, err)
	}

	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: nic.Bridge, MTU: mtu}}
	if err := h.LinkAdd(br); err != nil {
		return NIC{}, fmt.Errorf("create bridge %s: %w", nic.Bridge, err)
	}
	if err := h.LinkSetMaster(l, br); err != nil {
		return NIC{}, err
	}
	if err := h.LinkSetUp(l); err != nil {
		return NIC{}, err
	}
	if hasV4(ifc.ips) {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: dhcpServerAddr.AsSlice(), Mask: net.CIDRMask(32, 32)}}
		if err := h.AddrAdd(br, a); err != nil {
			return NIC{}, fmt.Errorf("address the DHCP responder on %s: %w", nic.Bridge, err)
		}
	}

	// The tun driver creates the tap in the namespace of the thread that
	// opens /dev/net/tun, so this step runs inside the namespace.
	tap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: nic.Tap},
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
	}
	if err := inNetns(path, func() error { return netlink.LinkAdd(tap) }); err != nil {
		return NIC{}, fmt.Errorf("create tap %s: %w", nic.Tap, err)
	}
	tl, err := h.LinkByName(nic.Tap)
	if err != nil {
		return NIC{}, err
	}
	if err := h.LinkSetMTU(tl, mtu); err != nil {
		return NIC{}, err
	}
	if err := h.LinkSetMaster(tl, br); err != nil {
		return NIC{}, err
	}
	if err := h.LinkSetUp(tl); err != nil {
		return NIC{}, err
	}
	if err := h.LinkSetUp(br); err != nil {
		return NIC{}, err
	}
	return nic, nil
}

// linkUp sets a link in the namespace at path up.
func linkUp(path, name string) error {
	h, err := handleAt(path)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return err
	}
	return h.LinkSetUp(l)
}

// randomMAC is a locally administered unicast MAC.
func randomMAC() (net.HardwareAddr, error) {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	b[0] = (b[0] | 0x02) &^ 0x01
	return net.HardwareAddr(b), nil
}

// masterOf names the bridge link name is on in the namespace at path, or "".
func masterOf(path, name string) string {
	h, err := handleAt(path)
	if err != nil {
		return ""
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil || l.Attrs().MasterIndex == 0 {
		return ""
	}
	m, err := h.LinkByIndex(l.Attrs().MasterIndex)
	if err != nil {
		return ""
	}
	return m.Attrs().Name
}
