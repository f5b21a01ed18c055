package vmnet

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/sirupsen/logrus"
)

// leaseTime is "infinite" (RFC 2131 0xffffffff): the guest keeps its address
// whatever happens to the responder, e.g. while its supervisor restarts.
const leaseTime = time.Duration(math.MaxUint32) * time.Second

// ServeDHCP answers the guest's DHCP on every NIC with an IPv4 address until
// ctx ends: each NIC's MAC gets that NIC's address, mask, gateway, MTU, the
// CNI result's DNS servers and the pod name as host name. Requests from any
// other MAC are ignored. The sockets are opened in att.Netns, so the caller
// may run anywhere; it returns nil when ctx ends.
func ServeDHCP(ctx context.Context, att *Attachment) error {
	return ServeDHCPWithLog(ctx, att, logrus.NewEntry(logrus.StandardLogger()))
}

// ServeDHCPWithLog is ServeDHCP logging to log.
func ServeDHCPWithLog(ctx context.Context, att *Attachment, log *logrus.Entry) error {
	var servers []*server4.Server
	defer func() {
		for _, s := range servers {
			s.Close()
		}
	}()
	for _, nic := range att.NICs {
		lease, ok := leaseOf(att, nic)
		if !ok {
			continue
		}
		bridge := nic.Bridge
		if bridge == "" && att.Netns != "" {
			// An attachment copied by a caller that dropped the field: the
			// bridge is the tap's master.
			bridge = masterOf(att.Netns, nic.Tap)
		}
		if bridge == "" {
			return fmt.Errorf("vmnet: NIC %s has no bridge to serve DHCP on", nic.PodIfName)
		}
		var srv *server4.Server
		open := func() error {
			var err error
			srv, err = server4.NewServer(bridge, &net.UDPAddr{IP: net.IPv4zero, Port: dhcpv4.ServerPort}, lease.handle(log))
			return err
		}
		var err error
		if att.Netns != "" {
			err = inNetns(att.Netns, open)
		} else {
			err = open()
		}
		if err != nil {
			return fmt.Errorf("vmnet: DHCP responder on %s: %w", bridge, err)
		}
		servers = append(servers, srv)
	}
	if len(servers) == 0 {
		<-ctx.Done()
		return nil
	}
	errc := make(chan error, len(servers))
	for _, s := range servers {
		go func() { errc <- s.Serve() }()
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
			return nil
		}
		return fmt.Errorf("vmnet: DHCP responder: %w", err)
	}
}

// lease is what one NIC's guest interface is offered.
type lease struct {
	mac      net.HardwareAddr
	ip       netip.Prefix
	gateway  netip.Addr
	mtu      int
	dns      []netip.Addr
	hostname string
}

func leaseOf(att *Attachment, nic NIC) (*lease, bool) {
	mac, err := net.ParseMAC(nic.MAC)
	if err != nil {
		return nil, false
	}
	for _, p := range nic.IPs {
		if p.Addr().Is4() {
			return &lease{mac: mac, ip: p, gateway: nic.Gateway, mtu: nic.MTU, dns: att.DNS, hostname: att.Hostname}, true
		}
	}
	return nil, false
}

func (l *lease) handle(log *logrus.Entry) server4.Handler {
	return func(conn net.PacketConn, _ net.Addr, m *dhcpv4.DHCPv4) {
		if m.OpCode != dhcpv4.OpcodeBootRequest || !strings.EqualFold(m.ClientHWAddr.String(), l.mac.String()) {
			return
		}
		reply, err := l.reply(m)
		if err != nil {
			log.WithError(err).Warn("DHCP reply")
			return
		}
		if reply == nil {
			return
		}
		// Broadcast: the client has no address yet, and the namespace has
		// no route to the one it is about to get.
		if _, err := conn.WriteTo(reply.ToBytes(), &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}); err != nil {
			log.WithError(err).Warn("DHCP send")
			return
		}
		log.WithFields(logrus.Fields{"mac": l.mac.String(), "ip": l.ip.String(), "type": reply.MessageType().String()}).Debug("DHCP answered")
	}
}

// reply builds the OFFER, ACK or NAK for m, or nil for messages that need
// no answer (RELEASE, DECLINE, INFORM).
func (l *lease) reply(m *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, error) {
	ip := net.IP(l.ip.Addr().AsSlice())
	var typ dhcpv4.MessageType
	switch m.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		typ = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest:
		want := m.RequestedIPAddress()
		if want == nil || want.IsUnspecified() {
			want = m.ClientIPAddr
		}
		if sid := m.ServerIdentifier(); sid != nil && !sid.Equal(net.IP(dhcpServerAddr.AsSlice())) {
			return nil, nil // the client chose another server
		}
		if !want.Equal(ip) {
			return dhcpv4.NewReplyFromRequest(m,
				dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
				dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(dhcpServerAddr.AsSlice()))),
				dhcpv4.WithOption(dhcpv4.OptMessage("this MAC has address "+ip.String())))
		}
		typ = dhcpv4.MessageTypeAck
	default:
		return nil, nil
	}
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithYourIP(ip),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(dhcpServerAddr.AsSlice()))),
		dhcpv4.WithOption(dhcpv4.OptSubnetMask(net.CIDRMask(l.ip.Bits(), 32))),
		dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(leaseTime)),
	}
	if l.gateway.IsValid() {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRouter(net.IP(l.gateway.AsSlice()))))
	}
	if l.mtu >= 576 && l.mtu <= math.MaxUint16 {
		mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionInterfaceMTU, binary.BigEndian.AppendUint16(nil, uint16(l.mtu))))
	}
	var dns []net.IP
	for _, a := range l.dns {
		if a.Is4() {
			dns = append(dns, net.IP(a.AsSlice()))
		}
	}
	if len(dns) > 0 {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDNS(dns...)))
	}
	if l.hostname != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptHostName(l.hostname)))
	}
	return dhcpv4.NewReplyFromRequest(m, mods...)
}
