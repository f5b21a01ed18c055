package vmnet

import (
	"fmt"
	"sort"

	"github.com/vishvananda/netlink"
)

// addUnreported appends to res the interfaces CNI created in the namespace
// but left out of its result. A meta plugin returns only its default
// network's result (Multus does, and so does evelet-cni, as the runtime
// wants eth0 there), yet every secondary network (net1, ...) it attached
// must become a guest NIC too. Such an interface gets its addresses from the
// namespace and no gateway (the pod's default route is the primary
// network's). Bridges, enslaved links and links without an Ethernet MAC are
// not pod interfaces and are skipped; the order is creation (ifindex) order,
// which is the meta plugin's attachment order.
func addUnreported(path string, res *cniResult) error {
	h, err := handleAt(path)
	if err != nil {
		return err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	known := map[string]bool{"lo": true}
	for _, ifc := range res.ifaces {
		known[ifc.name] = true
	}
	sort.Slice(links, func(i, j int) bool { return links[i].Attrs().Index < links[j].Attrs().Index })
	for _, l := range links {
		a := l.Attrs()
		if known[a.Name] || a.MasterIndex != 0 || len(a.HardwareAddr) != 6 {
			continue
		}
		switch l.Type() {
		case "bridge", "tuntap", "bond":
			continue
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("addresses of %s: %w", a.Name, err)
		}
		ifc := cniIface{name: a.Name}
		for _, ad := range addrs {
			if ad.IP.IsLinkLocalUnicast() {
				continue
			}
			if p, ok := prefixOf(*ad.IPNet); ok {
				ifc.ips = append(ifc.ips, p)
			}
		}
		res.ifaces = append(res.ifaces, ifc)
	}
	return nil
}
