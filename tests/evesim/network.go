package evesim

// Network instances as zedrouter makes them (pillar cmd/zedrouter and
// nireconciler), in the netns of the calling process (the "device"):
//
//   - Local NI: bridge bn<N> (here <prefix>bn<N>) holding the gateway
//     address, dnsmasq serving the DhcpRange on it (and DNS), and NAT
//     (iptables MASQUERADE) for the subnet.
//   - Switch NI: bridge <prefix>bn<N> enslaving a port; the port here is a
//     veth whose far end lives in an "external" L2 network: its own netns
//     <prefix>ext<N> with its own host address and DHCP server (dnsmasq).
//
// Each NI's NetworkInstanceStatus is published as
// <Run>/zedrouter/NetworkInstanceStatus/<uuid>.json. Every name carries the
// Network's prefix so parallel tests never collide; Close removes all of it.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/internal/atomicfile"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Network makes and publishes network instances for one test.
type Network struct {
	Root   pubsub.Root
	Prefix string
	// WorkDir holds dnsmasq's config, leases and pid files.
	WorkDir string

	mu    sync.Mutex
	nis   []*NI
	procs []*exec.Cmd
	undo  []func() error
}

// NewNetwork returns a Network publishing under root.Run; prefix (a few
// letters, e.g. "h7") starts every link, netns and iptables comment it makes.
func NewNetwork(root pubsub.Root, prefix, workDir string) *Network {
	return &Network{Root: root, Prefix: prefix, WorkDir: workDir}
}

// NI is one network instance: its published status, and for a Switch NI
// the external network behind its port.
type NI struct {
	net    *Network
	Status pubsub.NetworkInstanceStatus
	// External is, for a Switch NI, the address of the external host (in
	// netns ExternalNetns) on the external L2 network, with its mask.
	External      *net.IPNet
	ExternalNetns string
	// ExternalDHCP is the external DHCP server's range.
	ExternalDHCP pubsub.IPRange
}

// LocalNIOptions shape a Local NI. Subnet is required ("10.97.1.0/24");
// the gateway is its first address; DhcpRange defaults to .2-.99.
type LocalNIOptions struct {
	Name      string
	UUID      string
	BridgeNum int
	Subnet    string
	DhcpStart string
	DhcpEnd   string
	MTU       uint16
	// DNSServers are published as the NI's DnsServers (empty: the gateway).
	DNSServers []string
}

// SwitchNIOptions shape a Switch NI. ExternalSubnet ("192.168.97.0/24")
// is the external network: its host gets the first address and its DHCP
// server hands out .100-.150.
type SwitchNIOptions struct {
	Name           string
	UUID           string
	BridgeNum      int
	ExternalSubnet string
}

func (n *Network) bridgeName(num int) string { return n.Prefix + "bn" + strconv.Itoa(num) }

// AddLocalNI makes a Local NI and publishes it activated.
func (n *Network) AddLocalNI(o LocalNIOptions) (*NI, error) {
	_, sub, err := net.ParseCIDR(o.Subnet)
	if err != nil || sub.IP.To4() == nil {
		return nil, fmt.Errorf("local NI %q: subnet %q: want an IPv4 CIDR", o.Name, o.Subnet)
	}
	gw := nthAddr(sub, 1)
	st, err := n.newStatus(o.Name, o.UUID, o.BridgeNum, pubsub.NetworkInstanceTypeLocal)
	if err != nil {
		return nil, err
	}
	st.Subnet, st.Gateway, st.BridgeIPAddr = sub, gw, gw
	st.DhcpRange = pubsub.IPRange{Start: nthAddr(sub, 2), End: nthAddr(sub, 99)}
	if o.DhcpStart != "" {
		st.DhcpRange = pubsub.IPRange{Start: net.ParseIP(o.DhcpStart).To4(), End: net.ParseIP(o.DhcpEnd).To4()}
	}
	for _, s := range o.DNSServers {
		st.DnsServers = append(st.DnsServers, net.ParseIP(s))
	}
	st.MTU = o.MTU
	if st.MTU == 0 {
		st.MTU = 1500
	}
	br, err := n.addBridge(st.BridgeName, int(st.MTU))
	if err != nil {
		return nil, err
	}
	st.BridgeMac, st.BridgeIfindex = br.Attrs().HardwareAddr, br.Attrs().Index
	if err := n.addAddr(br, &net.IPNet{IP: gw, Mask: sub.Mask}); err != nil {
		return nil, err
	}
	// dnsmasq as zedrouter runs it: DHCP for the range, DNS, on the bridge only.
	if err := n.dnsmasq("", st.BridgeName, gw, st.DhcpRange.Start, st.DhcpRange.End, sub.Mask, gw); err != nil {
		return nil, err
	}
	if err := n.masquerade(sub, st.BridgeName); err != nil {
		return nil, err
	}
	ni := &NI{net: n, Status: st}
	return ni, n.adopt(ni)
}

// AddSwitchNI makes a Switch NI onto an external network and publishes it
// activated. EVE gives no addresses on it.
func (n *Network) AddSwitchNI(o SwitchNIOptions) (*NI, error) {
	_, ext, err := net.ParseCIDR(o.ExternalSubnet)
	if err != nil || ext.IP.To4() == nil {
		return nil, fmt.Errorf("switch NI %q: external subnet %q: want an IPv4 CIDR", o.Name, o.ExternalSubnet)
	}
	st, err := n.newStatus(o.Name, o.UUID, o.BridgeNum, pubsub.NetworkInstanceTypeSwitch)
	if err != nil {
		return nil, err
	}
	st.MTU = 1500
	port := fmt.Sprintf("%sport%d", n.Prefix, o.BridgeNum)
	st.PortLabel, st.Ports = port, []string{port}
	br, err := n.addBridge(st.BridgeName, int(st.MTU))
	if err != nil {
		return nil, err
	}
	st.BridgeMac, st.BridgeIfindex = br.Attrs().HardwareAddr, br.Attrs().Index

	nsName := fmt.Sprintf("%sext%d", n.Prefix, o.BridgeNum)
	if err := n.run("ip", "netns", "add", nsName); err != nil {
		return nil, err
	}
	n.onClose(func() error { return n.run("ip", "netns", "del", nsName) })
	peer := fmt.Sprintf("%sx%d", n.Prefix, o.BridgeNum)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port, MTU: 1500, MasterIndex: br.Attrs().Index}, PeerName: peer}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("veth %s: %w", port, err)
	}
	n.onClose(func() error { return delLink(port) })
	target, err := netns.GetFromName(nsName)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	pl, err := netlink.LinkByName(peer)
	if err == nil {
		err = netlink.LinkSetNsFd(pl, int(target))
	}
	if err == nil {
		err = netlink.LinkSetUp(veth)
	}
	if err != nil {
		return nil, fmt.Errorf("moving %s to %s: %w", peer, nsName, err)
	}
	h, err := netlink.NewHandleAt(target)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	host := &net.IPNet{IP: nthAddr(ext, 1), Mask: ext.Mask}
	pl, err = h.LinkByName(peer)
	if err == nil {
		err = h.AddrAdd(pl, &netlink.Addr{IPNet: host})
	}
	if err == nil {
		err = h.LinkSetUp(pl)
	}
	if err == nil {
		if lo, lerr := h.LinkByName("lo"); lerr == nil {
			err = h.LinkSetUp(lo)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("external network in %s: %w", nsName, err)
	}
	dhcp := pubsub.IPRange{Start: nthAddr(ext, 100), End: nthAddr(ext, 150)}
	if err := n.dnsmasq(nsName, peer, host.IP, dhcp.Start, dhcp.End, ext.Mask, nil); err != nil {
		return nil, err
	}
	ni := &NI{net: n, Status: st, External: host, ExternalNetns: nsName, ExternalDHCP: dhcp}
	return ni, n.adopt(ni)
}

func (n *Network) newStatus(name, uuid string, num int, typ pubsub.NetworkInstanceType) (pubsub.NetworkInstanceStatus, error) {
	var st pubsub.NetworkInstanceStatus
	if uuid == "" {
		u, err := newUUID()
		if err != nil {
			return st, err
		}
		uuid = u
	}
	st.UUID, st.Version, st.DisplayName, st.Type = pubsub.UUID(uuid), "1", name, typ
	st.IpType = pubsub.AddressTypeIPV4
	st.BridgeNum, st.BridgeName = num, n.bridgeName(num)
	st.Activate, st.Activated = 1, true
	return st, nil
}

func (n *Network) adopt(ni *NI) error {
	n.mu.Lock()
	n.nis = append(n.nis, ni)
	n.mu.Unlock()
	return ni.Publish()
}

// Publish (re)writes the NI's status file from ni.Status.
func (ni *NI) Publish() error {
	b, err := json.Marshal(ni.Status)
	if err != nil {
		return err
	}
	p := ni.net.Root.NetworkInstanceStatus(ni.Status.UUID.String())
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(p, b, 0o644)
}

// SetActivated publishes the NI as (de)activated, as zedrouter does while
// it (re)creates or tears down an NI.
func (ni *NI) SetActivated(on bool) error {
	ni.Status.Activated = on
	return ni.Publish()
}

// Unpublish removes the NI's status file, as when the controller deletes
// the NI (the bridge stays until Close).
func (ni *NI) Unpublish() error {
	err := os.Remove(ni.net.Root.NetworkInstanceStatus(ni.Status.UUID.String()))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

func (n *Network) addBridge(name string, mtu int) (netlink.Link, error) {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}}
	if err := netlink.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("bridge %s: %w", name, err)
	}
	n.onClose(func() error { return delLink(name) })
	if err := netlink.LinkSetUp(br); err != nil {
		return nil, err
	}
	return netlink.LinkByName(name)
}

func (n *Network) addAddr(l netlink.Link, a *net.IPNet) error {
	if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: a}); err != nil {
		return fmt.Errorf("address %s on %s: %w", a, l.Attrs().Name, err)
	}
	return nil
}

// dnsmasq starts a DHCP (and, with dns set, DNS) server on ifname, in
// netns nsName ("" for the calling process's), until Close.
func (n *Network) dnsmasq(nsName, ifname string, listen, start, end net.IP, mask net.IPMask, router net.IP) error {
	if err := os.MkdirAll(n.WorkDir, 0o755); err != nil {
		return err
	}
	base := filepath.Join(n.WorkDir, "dnsmasq."+ifname)
	args := []string{
		"--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces", "--except-interface=lo",
		"--interface=" + ifname, "--listen-address=" + listen.String(),
		"--dhcp-range=" + start.String() + "," + end.String() + "," + net.IP(mask).String() + ",60m",
		"--dhcp-leasefile=" + base + ".leases", "--pid-file=" + base + ".pid",
		"--log-facility=" + base + ".log", "--log-dhcp", "--dhcp-authoritative",
	}
	if router == nil {
		args = append(args, "--port=0") // the external network: DHCP only
	} else {
		args = append(args, "--dhcp-option=option:router,"+router.String(), "--dhcp-option=option:dns-server,"+router.String())
	}
	name, cmdArgs := "dnsmasq", args
	if nsName != "" {
		name, cmdArgs = "ip", append([]string{"netns", "exec", nsName, "dnsmasq"}, args...)
	}
	cmd := exec.Command(name, cmdArgs...)
	out, err := os.Create(base + ".out")
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("dnsmasq on %s: %w", ifname, err)
	}
	n.mu.Lock()
	n.procs = append(n.procs, cmd)
	n.mu.Unlock()
	go func() { _ = cmd.Wait(); out.Close() }()
	return nil
}

func (n *Network) masquerade(sub *net.IPNet, bridge string) error {
	rule := []string{"POSTROUTING", "-s", sub.String(), "!", "-o", bridge, "-j", "MASQUERADE", "-m", "comment", "--comment", n.Prefix + "-evesim"}
	if err := n.run("iptables", append([]string{"-w", "-t", "nat", "-A"}, rule...)...); err != nil {
		return err
	}
	n.onClose(func() error { return n.run("iptables", append([]string{"-w", "-t", "nat", "-D"}, rule...)...) })
	return nil
}

func (n *Network) onClose(f func() error) {
	n.mu.Lock()
	n.undo = append(n.undo, f)
	n.mu.Unlock()
}

func (n *Network) run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %v: %v: %s", name, args, err, out)
	}
	return nil
}

// Close stops the DHCP servers and removes the links, netns, NAT rules and
// status files, in reverse order of creation. It goes on after an error
// and returns the first.
func (n *Network) Close() error {
	n.mu.Lock()
	procs, undo, nis := n.procs, n.undo, n.nis
	n.procs, n.undo, n.nis = nil, nil, nil
	n.mu.Unlock()
	var first error
	for _, p := range procs {
		if p.Process != nil {
			_ = p.Process.Kill()
		}
	}
	for _, ni := range nis {
		if err := ni.Unpublish(); err != nil && first == nil {
			first = err
		}
	}
	for i := len(undo) - 1; i >= 0; i-- {
		if err := undo[i](); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func delLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	return netlink.LinkDel(l)
}

func nthAddr(sub *net.IPNet, n uint32) net.IP {
	ip := sub.IP.To4()
	v := uint32(ip[0])<<24 | uint32(ip[1])<<16 | uint32(ip[2])<<8 | uint32(ip[3])
	v += n
	return net.IPv4(byte(v>>24), byte(v>>16), byte(v>>8), byte(v)).To4()
}
