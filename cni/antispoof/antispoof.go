// Package antispoof builds the one set of nftables rules (bridge family)
// that holds an interface on a bridge to its own identity: eve-ni's pod
// veths on an EVE NI bridge and a VM pod's taps (cri/vm/vmnet) use it, so
// the two guards cannot drift apart.
//
// Frames entering the bridge through the interface must carry its MAC as
// Ethernet source. When it has IPv4 addresses, ARP must carry that MAC as
// sender hardware address and one of the addresses as sender IP; IPv4 must
// come from one of the addresses, or from 0.0.0.0 only as a DHCP client's
// UDP 68->67; every other ethertype (IPv6, VLAN tags, ...) is dropped, as
// only IPv4 is handed out. An interface without addresses (L2 only) keeps
// only the MAC rule: there is no address to hold it to.
package antispoof

import (
	"encoding/binary"
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

var (
	ethARP  = binary.BigEndian.AppendUint16(nil, unix.ETH_P_ARP)
	ethIPv4 = binary.BigEndian.AppendUint16(nil, unix.ETH_P_IP)
)

// IfnameData is an interface name as nftables compares it (NUL padded).
func IfnameData(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// AddRules queues on c the rules for frames that enter through iface
// (whose MAC is mac and IPv4 addresses ips; other families are ignored)
// into chain ch of table t, a bridge-family filter chain at prerouting
// whose policy accepts. Every rule matches iface first, so one chain can
// hold the rules of several interfaces. The caller flushes c.
func AddRules(c *nftables.Conn, t *nftables.Table, ch *nftables.Chain, iface string, mac net.HardwareAddr, ips []net.IP) error {
	if len(mac) != 6 {
		return fmt.Errorf("anti-spoofing rules for %s: MAC %q is not an Ethernet address", iface, mac)
	}
	drop := &expr.Verdict{Kind: expr.VerdictDrop}
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	rule := func(parts ...[]expr.Any) {
		ex := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: IfnameData(iface)},
		}
		for _, p := range parts {
			ex = append(ex, p...)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: ex})
	}
	cmp := func(op expr.CmpOp, base expr.PayloadBase, offset, n uint32, data []byte) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: base, Offset: offset, Len: n},
			&expr.Cmp{Op: op, Register: 1, Data: data},
		}
	}
	proto := func(p []byte) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p},
		}
	}
	// ether saddr != MAC drop
	rule(cmp(expr.CmpOpNeq, expr.PayloadBaseLLHeader, 6, 6, mac), []expr.Any{drop})
	var ip4s []net.IP
	for _, ip := range ips {
		if v4 := ip.To4(); v4 != nil {
			ip4s = append(ip4s, v4)
		}
	}
	if len(ip4s) == 0 {
		return nil
	}
	nh := expr.PayloadBaseNetworkHeader
	// arp saddr ether != MAC drop; arp saddr ip IP accept; other ARP drop
	rule(proto(ethARP), cmp(expr.CmpOpNeq, nh, 8, 6, mac), []expr.Any{drop})
	for _, ip := range ip4s {
		rule(proto(ethARP), cmp(expr.CmpOpEq, nh, 14, 4, ip), []expr.Any{accept})
	}
	rule(proto(ethARP), []expr.Any{drop})
	// ip saddr IP accept; DHCP client from 0.0.0.0 accept; other IPv4 drop
	for _, ip := range ip4s {
		rule(proto(ethIPv4), cmp(expr.CmpOpEq, nh, 12, 4, ip), []expr.Any{accept})
	}
	rule(proto(ethIPv4), cmp(expr.CmpOpEq, nh, 12, 4, net.IPv4zero.To4()), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
	}, cmp(expr.CmpOpEq, expr.PayloadBaseTransportHeader, 0, 2, binary.BigEndian.AppendUint16(nil, 68)),
		cmp(expr.CmpOpEq, expr.PayloadBaseTransportHeader, 2, 2, binary.BigEndian.AppendUint16(nil, 67)),
		[]expr.Any{accept})
	// everything else (spoofed IPv4, IPv6, VLAN tags, ...) drop
	rule([]expr.Any{drop})
	return nil
}
