package vmnet

import (
	"encoding/binary"
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/lf-edge/evelet/cni/antispoof"
)

// The guest is root in its own kernel: it can put any source MAC or IP on
// its NIC, and its frames land on the pod network's L2 segment (the node's
// CNI bridge) next to other pods and the gateway. Without a guard it could
// answer ARP for the gateway or another pod's IP (and take their traffic),
// or fill the node bridge's FDB with made-up MACs. So every frame from a
// tap must carry the NIC's MAC; ARP must carry that MAC and the NIC's IPv4
// address as sender; IPv4 must come from it (or from 0.0.0.0 only as a
// DHCP client's UDP 68->67); other ethertypes (IPv6, VLAN tags, ...) are
// dropped, as the guest is offered IPv4 only: the rules of
// cni/antispoof, which eve-ni's pod veths get too. DHCP is kept between the guest and our responder. A NIC
// without an IPv4 address (an L2-only secondary network, which may have a
// DHCP server of its own) keeps only the MAC rule.
//
// The rules live in a bridge-family nftables table inside the sandbox
// namespace, so they go with it; nothing is added to the host.

const guardTable = "evelet_vmguard"

// ifnameData is an interface name as nftables compares it (NUL padded).
var ifnameData = antispoof.IfnameData

// guardNICs installs the anti-spoofing rules for nics in the namespace at path.
func guardNICs(path string, nics []NIC) error {
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer nsh.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(nsh)))
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyBridge, Name: guardTable})
	policy := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{
		Name: "from_guest", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityFilter, Policy: &policy,
	})
	fwd := c.AddChain(&nftables.Chain{
		Name: "dhcp_forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &policy,
	})
	out := c.AddChain(&nftables.Chain{
		Name: "dhcp_output", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &policy,
	})
	drop := &expr.Verdict{Kind: expr.VerdictDrop}
	for _, nic := range nics {
		mac, err := net.ParseMAC(nic.MAC)
		if err != nil {
			return fmt.Errorf("guard %s: %w", nic.Tap, err)
		}
		ruleIn := func(chain *nftables.Chain, parts ...[]expr.Any) {
			var ex []expr.Any
			for _, p := range parts {
				ex = append(ex, p...)
			}
			c.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: ex})
		}
		ifIs := func(key expr.MetaKey, name string) []expr.Any {
			return []expr.Any{
				&expr.Meta{Key: key, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameData(name)},
			}
		}
		// udp sport/dport port (offset 0: source, 2: destination)
		udpPort := func(offset uint32, port uint16) []expr.Any {
			return []expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: offset, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
			}
		}
		// The same rules as eve-ni's pod veths (cni/antispoof).
		var ip4s []net.IP
		for _, p := range nic.IPs {
			if p.Addr().Is4() {
				ip4s = append(ip4s, p.Addr().AsSlice())
			}
		}
		if err := antispoof.AddRules(c, t, ch, nic.Tap, mac, ip4s); err != nil {
			return err
		}
		if len(ip4s) == 0 {
			continue
		}

		// DHCP stays between the guest and our responder: the guest's
		// requests do not go out to the pod network, our answers do not
		// either, and no DHCP server there (another VM pod's guest, say)
		// can answer the guest.
		ruleIn(fwd, ifIs(expr.MetaKeyIIFNAME, nic.Tap), ifIs(expr.MetaKeyOIFNAME, nic.PodIfName), udpPort(2, 67), []expr.Any{drop})
		ruleIn(fwd, ifIs(expr.MetaKeyIIFNAME, nic.PodIfName), udpPort(0, 67), []expr.Any{drop})
		ruleIn(out, ifIs(expr.MetaKeyOIFNAME, nic.PodIfName), udpPort(0, 67), []expr.Any{drop})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install the guest's anti-spoofing rules (nftables, bridge family): %w", err)
	}
	return nil
}
