package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"
)

// netState records the address each NIC leased, for HTTP and the log.
type netState struct {
	mu    sync.Mutex
	addrs map[string]*net.IPNet // NIC name -> leased address
}

func newNetState() *netState { return &netState{addrs: map[string]*net.IPNet{}} }

func (s *netState) set(nic string, a *net.IPNet) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addrs[nic] = a
}

// ips lists the leased addresses ordered by NIC name.
func (s *netState) ips() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, n := range sortedKeys(s.addrs) {
		out = append(out, s.addrs[n].IP.String())
	}
	return out
}

func (s *netState) describe() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, n := range sortedKeys(s.addrs) {
		out = append(out, n+"="+s.addrs[n].String())
	}
	if len(out) == 0 {
		return []string{"none"}
	}
	return out
}

func sortedKeys(m map[string]*net.IPNet) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// setupLinks brings lo and every Ethernet NIC up and returns the NICs'
// names.
func setupLinks() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	var nics []string
	for _, l := range links {
		a := l.Attrs()
		if a.Name != "lo" && (a.EncapType != "ether" || len(a.HardwareAddr) != 6) {
			continue
		}
		if err := netlink.LinkSetUp(l); err != nil {
			logf("link %s up: %v", a.Name, err)
			continue
		}
		if a.Name != "lo" {
			nics = append(nics, a.Name)
			logf("link %s (%s) up", a.Name, a.HardwareAddr)
		}
	}
	if len(nics) == 0 {
		logf("no network interfaces")
	}
	sort.Strings(nics)
	return nics, nil
}

type nicResult struct {
	nic      string
	hostname string
	err      error
}

// runDHCP leases an address for nic, configures it, reports the first
// outcome on results, and then renews at half the lease time for the life
// of the guest. A failed first attempt is retried until it succeeds, so a
// DHCP server that comes up late still gets the NIC an address.
func runDHCP(ctx context.Context, nic string, st *netState, results chan<- nicResult) {
	reported := false
	backoff := time.Second
	for {
		lease, err := leaseOnce(ctx, nic)
		if err == nil {
			err = applyLease(nic, lease, st)
		}
		if err != nil {
			if !reported {
				reported = true
				results <- nicResult{nic: nic, err: err}
			}
			time.Sleep(backoff)
			if backoff < 30*time.Second {
				backoff *= 2
			}
			continue
		}
		backoff = time.Second
		if !reported {
			reported = true
			results <- nicResult{nic: nic, hostname: lease.ACK.HostName()}
		}
		time.Sleep(lease.ACK.IPAddressLeaseTime(time.Hour) / 2)
	}
}

func leaseOnce(ctx context.Context, nic string) (*nclient4.Lease, error) {
	c, err := nclient4.New(nic, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(5))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return c.Request(ctx, dhcpv4.WithRequestedOptions(
		dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer,
		dhcpv4.OptionHostName, dhcpv4.OptionInterfaceMTU))
}

// applyLease puts the leased address on nic, sets its MTU when the server
// gave one, and adds a default route through the offered router unless
// another NIC already holds one.
func applyLease(nic string, lease *nclient4.Lease, st *netState) error {
	ack := lease.ACK
	link, err := netlink.LinkByName(nic)
	if err != nil {
		return err
	}
	mask := ack.SubnetMask()
	if mask == nil {
		mask = ack.YourIPAddr.DefaultMask()
	}
	ipnet := &net.IPNet{IP: ack.YourIPAddr.To4(), Mask: mask}
	if b := ack.Options.Get(dhcpv4.OptionInterfaceMTU); len(b) == 2 {
		if mtu := int(binary.BigEndian.Uint16(b)); mtu >= 576 && mtu != link.Attrs().MTU {
			if err := netlink.LinkSetMTU(link, mtu); err != nil {
				logf("dhcp %s: mtu %d: %v", nic, mtu, err)
			}
		}
	}
	addr := &netlink.Addr{IPNet: ipnet, ValidLft: int(ack.IPAddressLeaseTime(time.Hour).Seconds()), PreferedLft: int(ack.IPAddressLeaseTime(time.Hour).Seconds())}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("address %s: %w", ipnet, err)
	}
	if routers := ack.Router(); len(routers) > 0 {
		def := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: routers[0]}
		if routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: nil}, netlink.RT_FILTER_DST); err == nil && !hasDefault(routes) {
			if err := netlink.RouteAdd(def); err != nil {
				logf("dhcp %s: default route via %s: %v", nic, routers[0], err)
			}
		}
	}
	if dns := ack.DNS(); len(dns) > 0 {
		var b strings.Builder
		for _, d := range dns {
			fmt.Fprintf(&b, "nameserver %s\n", d)
		}
		if err := os.WriteFile("/etc/resolv.conf", []byte(b.String()), 0o644); err != nil {
			logf("dhcp %s: resolv.conf: %v", nic, err)
		}
	}
	st.set(nic, ipnet)
	logf("dhcp %s: %s from %s, lease %s", nic, ipnet, ack.ServerIdentifier(), ack.IPAddressLeaseTime(time.Hour))
	return nil
}

// hasDefault reports whether a default route exists already (the first NIC
// to get a lease with a router owns it; renewals keep it).
func hasDefault(routes []netlink.Route) bool {
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			return true
		}
	}
	return false
}
