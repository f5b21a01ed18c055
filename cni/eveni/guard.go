package eveni

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/lf-edge/evelet/cni/antispoof"
)

// A pod on an NI bridge is an L2 neighbour of EVE's apps and of the NI's
// gateway, and with the default CAP_NET_RAW it can put any source MAC or
// IP on its frames: answer ARP for the gateway, take another app's
// address, fill the bridge's FDB with made-up MACs. The owner gave the NI
// for the addresses eve-ni hands out, so every frame entering the bridge
// from the pod's host veth must carry the pod interface's MAC; when the
// pod has IPv4 addresses, ARP must claim one of them (sender MAC and IP),
// IPv4 must come from one of them (or from 0.0.0.0 for a DHCP client's
// UDP 68->67), and any other ethertype (IPv6, VLAN tags, ...) is dropped,
// as eve-ni gives IPv4 only. A pod without addresses (L2-only Switch NI)
// keeps only the MAC rule: there is no address to hold it to.
//
// The rules live in evelet's own bridge-family table in the host netns
// (EVE's tables are never touched), one base chain per attachment named
// after the host veth, which DEL and CHECK recompute from the container
// ID and interface name without state.

// GuardTable is the host's bridge-family nftables table of eve-ni.
const GuardTable = "evelet_eveni"

func guardTable() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyBridge, Name: GuardTable}
}

// installGuard (re)places the rules for the pod behind host veth hostVeth,
// whose interface has MAC mac and addresses ips.
func installGuard(hostVeth string, mac net.HardwareAddr, ips []net.IP) error {
	if len(mac) != 6 {
		return fmt.Errorf("anti-spoofing rules for %s: pod MAC %q is not an Ethernet address", hostVeth, mac)
	}
	c, err := nftables.New()
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	t := c.AddTable(guardTable())
	policy := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{
		Name: hostVeth, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityFilter, Policy: &policy,
	})
	c.FlushChain(ch) // an ADD again after a crash replaces, never doubles
	if err := antispoof.AddRules(c, t, ch, hostVeth, mac, ips); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("installing the anti-spoofing rules for %s (nftables table bridge %s): %w", hostVeth, GuardTable, err)
	}
	return nil
}

// removeGuard deletes the rules of host veth hostVeth; none is fine.
func removeGuard(hostVeth string) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	ch, err := c.ListChain(guardTable(), hostVeth)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), "no such file") {
			return nil
		}
		return fmt.Errorf("looking up the anti-spoofing rules of %s: %w", hostVeth, err)
	}
	c.FlushChain(ch)
	c.DelChain(ch)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("removing the anti-spoofing rules of %s: %w", hostVeth, err)
	}
	return nil
}

// checkGuard says whether the rules of host veth hostVeth are in place.
func checkGuard(hostVeth string) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	ch, err := c.ListChain(guardTable(), hostVeth)
	if err == nil {
		var rs []*nftables.Rule
		if rs, err = c.GetRules(ch.Table, ch); err == nil && len(rs) == 0 {
			err = errors.New("chain is empty")
		}
	}
	if err != nil {
		return fmt.Errorf("anti-spoofing rules of %s (nftables table bridge %s) are missing: %w", hostVeth, GuardTable, err)
	}
	return nil
}

// GuardChains lists the host veths that have rules (for tests and GC).
func GuardChains() ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	defer c.CloseLasting()
	chs, err := c.ListChainsOfTableFamily(nftables.TableFamilyBridge)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, ch := range chs {
		if ch.Table.Name == GuardTable {
			names = append(names, ch.Name)
		}
	}
	return names, nil
}

// gcGuards drops rules whose host veth is gone (its attachment with it):
// the table is shared by every network using eve-ni, so one network's
// list of valid attachments cannot say which chains are stale.
func gcGuards() error {
	names, err := GuardChains()
	if err != nil {
		return err
	}
	for _, n := range names {
		if _, err := netlink.LinkByName(n); err == nil {
			continue
		}
		if err := removeGuard(n); err != nil {
			return err
		}
	}
	return nil
}

// RemoveGuardTableIfEmpty deletes eve-ni's table once no attachment has
// rules in it (the node left, or a test ended), so that nothing of
// evelet's stays in the host's ruleset. A table that still holds a chain
// is kept. Callers make sure no eve-ni ADD runs meanwhile (the node's
// kubelet is stopped): deleting a table takes its chains with it.
func RemoveGuardTableIfEmpty() error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	chains, err := GuardChains()
	if err != nil {
		return err
	}
	if len(chains) > 0 {
		return nil
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyBridge)
	if err != nil {
		return err
	}
	for _, t := range tables {
		if t.Name == GuardTable {
			c.DelTable(t)
			if err := c.Flush(); err != nil {
				return fmt.Errorf("removing nftables table bridge %s: %w", GuardTable, err)
			}
		}
	}
	return nil
}
