package eveni

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// HostVethName is the host end of the pod interface ifName of container
// id: fixed, so that DEL and CHECK find it without state.
func HostVethName(containerID, ifName string) string {
	h := sha256.Sum256([]byte(containerID + "/" + ifName))
	return "eni" + hex.EncodeToString(h[:])[:12]
}

// load parses the network configuration and the node's settings it names;
// conf is returned as soon as it parses, for the caller's error result.
func load(stdin []byte) (*NetConf, *Settings, error) {
	conf, err := ParseNetConf(stdin)
	if err != nil {
		return nil, nil, err
	}
	set, err := LoadSettings(conf.SettingsFile)
	if err != nil {
		return conf, nil, err
	}
	return conf, set, nil
}

// Add attaches the pod interface (CNI ADD) and prints nothing: it returns
// the result for skel's caller to print.
func Add(args *skel.CmdArgs) (*current.Result, *NetConf, error) {
	conf, set, err := load(args.StdinData)
	if err != nil {
		return nil, conf, err
	}
	ni, err := set.Resolve(conf.NetworkInstance)
	if err != nil {
		return nil, conf, err
	}
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	if ni.Status.Type == NITypeLocal {
		for _, ip := range conf.RuntimeConfig.IPs {
			if a, _, err := net.ParseCIDR(ip); (err == nil && a.To4() == nil) || (err != nil && net.ParseIP(ip).To4() == nil) {
				return nil, conf, fmt.Errorf("EVE network instance %s is a Local NI, which gives pods IPv4 addresses only: the requested address %s cannot be attached", ni.Name(), ip)
			}
		}
	}
	if ni.Status.Type == NITypeLocal && conf.IPAM.Type != "" {
		return nil, conf, fmt.Errorf("EVE network instance %s is a Local NI: pod addresses come from the device owner's reserved range, so the NAD must not set ipam", ni.Name())
	}
	if err := conf.checkIPAM(); err != nil {
		return nil, conf, err
	}
	if ni.Status.Type == NITypeSwitch {
		if err := checkSwitchIPAM(ni, conf.IPAM.Type); err != nil {
			return nil, conf, err
		}
	}
	if conf.IPAM.Type == "dhcp" {
		if err := dhcpReady(set); err != nil {
			return nil, conf, err
		}
	}
	// The app interfaces the owner configured on this NI: their static
	// addresses and MACs are never a pod's, even before EVE has seen them.
	apps, err := appAdapters(set.EVERun, ni.Status.UUID.String())
	if err != nil {
		return nil, conf, fmt.Errorf("EVE network instance %s: %w", ni.Name(), err)
	}
	// The address the pod asks for on a Local NI, checked before any link
	// is made: a refused request leaves the NI's bridge untouched.
	excluded := func(ip net.IP) bool {
		for _, a := range apps {
			if a.AppIPAddr.Equal(ip) {
				return true
			}
		}
		return ni.excluded(ip)
	}
	if want := conf.requestedIPv4(); want != nil && ni.Status.Type == NITypeLocal {
		if err := CheckRequested(want, ni.Grant.ReservedStart.To4(), ni.Grant.ReservedEnd.To4(), excluded); err != nil {
			return nil, conf, fmt.Errorf("EVE network instance %s: %w", ni.Name(), err)
		}
	}
	if ni.Status.Type == NITypeSwitch {
		var want []net.IP
		for _, s := range conf.RuntimeConfig.IPs {
			ip, _, err := net.ParseCIDR(s)
			if err != nil {
				ip = net.ParseIP(s)
			}
			want = append(want, ip)
		}
		if err := checkSwitchAddrs(ni, conf.IPAM.Type, want); err != nil {
			return nil, conf, fmt.Errorf("EVE network instance %s: %w", ni.Name(), err)
		}
	}
	if conf.RuntimeConfig.Mac != "" {
		mac, _ := net.ParseMAC(conf.RuntimeConfig.Mac)
		if err := checkMAC(ni, mac, apps); err != nil {
			return nil, conf, fmt.Errorf("EVE network instance %s: %w", ni.Name(), err)
		}
	}
	// The veth first: IPAM plugins such as dhcp work on the pod interface.
	undo, err := createVeth(args, conf, ni, res)
	if err != nil {
		return nil, conf, fmt.Errorf("EVE network instance %s: %w", ni.Name(), err)
	}
	fail := func(err error) (*current.Result, *NetConf, error) {
		undo()
		return nil, conf, fmt.Errorf("EVE network instance %s: %w", ni.Name(), err)
	}
	o := Owner{ContainerID: args.ContainerID, IfName: args.IfName}
	alloc := Allocator{Dir: filepath.Join(set.StateDir, ni.Status.UUID.String())}
	{
		next := undo
		undo = func() { next(); _ = alloc.Release(o) }
	}
	if mac, err := net.ParseMAC(res.Interfaces[1].Mac); err != nil {
		return fail(fmt.Errorf("pod interface MAC: %w", err))
	} else if err := alloc.ClaimMAC(o, mac); err != nil {
		return fail(err)
	}
	switch ni.Status.Type {
	case NITypeLocal:
		addr, err := alloc.Allocate(o, ni.Grant.ReservedStart.To4(), ni.Grant.ReservedEnd.To4(), excluded, conf.requestedIPv4())
		if err != nil {
			return fail(err)
		}
		gw := ni.gateway()
		res.IPs = []*current.IPConfig{{Address: net.IPNet{IP: addr, Mask: ni.Status.Subnet.Mask}, Gateway: gw}}
		if conf.DefaultRoute && gw != nil {
			res.Routes = []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: gw}}
		}
		res.DNS = types.DNS{Nameservers: ni.dns(), Domain: ni.Status.DomainName}
	case NITypeSwitch:
		if conf.IPAM.Type != "" {
			stdin, err := conf.ipamStdin(set)
			if err != nil {
				return fail(err)
			}
			r, err := ipam.ExecAdd(conf.IPAM.Type, stdin)
			if err != nil {
				return fail(fmt.Errorf("ipam %q: %w", conf.IPAM.Type, err))
			}
			next := undo
			undo = func() { next(); _ = ipam.ExecDel(conf.IPAM.Type, stdin) }
			ir, err := current.NewResultFromResult(r)
			if err != nil {
				return fail(err)
			}
			var got []net.IP
			for _, c := range ir.IPs {
				got = append(got, c.Address.IP)
			}
			if err := checkSwitchAddrs(ni, conf.IPAM.Type, got); err != nil {
				return fail(err)
			}
			res.IPs, res.DNS = ir.IPs, ir.DNS
			for _, rt := range ir.Routes {
				if ones, _ := rt.Dst.Mask.Size(); ones == 0 && !conf.DefaultRoute {
					continue // a default route only when the NAD asks
				}
				res.Routes = append(res.Routes, rt)
			}
		}
	}
	// Guard the bridge port before the pod interface gets its addresses:
	// no unguarded attachment is ever handed out.
	if err := guardAttachment(args, res); err != nil {
		return fail(err)
	}
	next := undo
	undo = func() { next(); _ = removeGuard(HostVethName(args.ContainerID, args.IfName)) }
	if err := configure(args, res); err != nil {
		return fail(err)
	}
	return res, conf, nil
}

// guardAttachment installs the anti-spoofing rules for the pod interface
// in res (guard.go).
func guardAttachment(args *skel.CmdArgs, res *current.Result) error {
	mac, err := net.ParseMAC(res.Interfaces[1].Mac)
	if err != nil {
		return fmt.Errorf("pod interface MAC: %w", err)
	}
	var ips []net.IP
	for _, c := range res.IPs {
		ips = append(ips, c.Address.IP)
	}
	return installGuard(HostVethName(args.ContainerID, args.IfName), mac, ips)
}

// NI types, re-exported for readability here.
const (
	NITypeLocal  = 2
	NITypeSwitch = 1
)

// dhcpReady refuses dhcp IPAM up front when its daemon is not running.
func dhcpReady(set *Settings) error {
	if _, err := os.Stat(set.dhcpSocket()); err != nil {
		return fmt.Errorf("ipam dhcp needs the CNI dhcp daemon (\"dhcp daemon\"), whose socket %s is missing: %w", set.dhcpSocket(), err)
	}
	return nil
}

// createVeth creates the veth, puts its host end into the NI's bridge and
// records both ends in res; undo removes it again.
func createVeth(args *skel.CmdArgs, conf *NetConf, ni *NI, res *current.Result) (undo func(), err error) {
	br, err := netlink.LinkByName(ni.Status.BridgeName)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", ni.Status.BridgeName, err)
	}
	mtu := int(ni.Status.MTU)
	if mtu == 0 {
		mtu = br.Attrs().MTU
	}
	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return nil, fmt.Errorf("pod network namespace %s: %w", args.Netns, err)
	}
	defer netns.Close()
	hostName := HostVethName(args.ContainerID, args.IfName)
	var hostIf, contIf net.Interface
	err = netns.Do(func(hostNS ns.NetNS) error {
		var err error
		hostIf, contIf, err = ip.SetupVethWithName(args.IfName, hostName, mtu, conf.RuntimeConfig.Mac, hostNS)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("creating the pod interface: %w", err)
	}
	nsPath := args.Netns
	undo = func() {
		_ = ns.WithNetNSPath(nsPath, func(ns.NetNS) error { return ip.DelLinkByName(args.IfName) })
	}
	hl, err := netlink.LinkByName(hostName)
	if err == nil {
		err = netlink.LinkSetMaster(hl, br)
	}
	if err == nil {
		err = netlink.LinkSetUp(hl)
	}
	if err != nil {
		undo()
		return nil, fmt.Errorf("adding %s to bridge %s: %w", hostName, br.Attrs().Name, err)
	}
	res.Interfaces = []*current.Interface{
		{Name: hostIf.Name, Mac: hostIf.HardwareAddr.String()},
		{Name: contIf.Name, Mac: contIf.HardwareAddr.String(), Sandbox: args.Netns},
	}
	return undo, nil
}

// configure gives the pod interface res's addresses and routes, or just
// brings it up when there are none (L2 only).
func configure(args *skel.CmdArgs, res *current.Result) error {
	for _, c := range res.IPs {
		c.Interface = current.Int(1)
	}
	err := ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
		if len(res.IPs) > 0 {
			return ipam.ConfigureIface(args.IfName, res)
		}
		l, err := netlink.LinkByName(args.IfName)
		if err == nil {
			err = netlink.LinkSetUp(l)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("configuring %s: %w", args.IfName, err)
	}
	return nil
}

// Del detaches the pod interface and frees its address (CNI DEL). It works
// without the NI (gone from EVE) and without the netns (already gone), and
// deleting twice is fine. What is eve-ni's own (links, guard, address) is
// freed whatever else fails; a Switch NI's IPAM plugin is asked last.
func Del(args *skel.CmdArgs) error {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return err
	}
	var errs []error
	if args.Netns != "" {
		err := ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
			err := ip.DelLinkByName(args.IfName)
			if errors.Is(err, ip.ErrLinkNotFound) {
				return nil
			}
			return err
		})
		// A netns that is gone, or no longer a netns (unmounted), took
		// the pod end of the veth with it.
		var gone ns.NSPathNotExistErr
		var notNS ns.NSPathNotNSErr
		if err != nil && !errors.As(err, &gone) && !errors.As(err, &notNS) {
			errs = append(errs, fmt.Errorf("removing %s: %w", args.IfName, err))
		}
	}
	if l, err := netlink.LinkByName(HostVethName(args.ContainerID, args.IfName)); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", l.Attrs().Name, err))
		}
	}
	if err := removeGuard(HostVethName(args.ContainerID, args.IfName)); err != nil {
		errs = append(errs, err)
	}
	set, err := LoadSettings(conf.SettingsFile)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	as, err := allocators(set.StateDir)
	if err != nil {
		errs = append(errs, err)
	}
	o := Owner{ContainerID: args.ContainerID, IfName: args.IfName}
	for _, a := range as {
		if err := a.Release(o); err != nil {
			errs = append(errs, err)
		}
	}
	if conf.checkIPAM() == nil && conf.IPAM.Type != "" && (conf.IPAM.Type != "dhcp" || dhcpReady(set) == nil) {
		// (Without its daemon, dhcp holds no lease to give back; a
		// refused IPAM never ran.)
		stdin, err := conf.ipamStdin(set)
		if err == nil {
			err = ipam.ExecDel(conf.IPAM.Type, stdin)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("ipam %q: %w", conf.IPAM.Type, err))
		}
	}
	return errors.Join(errs...)
}

// Check verifies the attachment still looks as ADD left it (CNI CHECK).
func Check(args *skel.CmdArgs) error {
	conf, set, err := load(args.StdinData)
	if err != nil {
		return err
	}
	ni, err := set.Resolve(conf.NetworkInstance)
	if err != nil {
		return err
	}
	hl, err := netlink.LinkByName(HostVethName(args.ContainerID, args.IfName))
	if err != nil {
		return fmt.Errorf("host end of %s: %w", args.IfName, err)
	}
	br, err := netlink.LinkByName(ni.Status.BridgeName)
	if err != nil || hl.Attrs().MasterIndex != br.Attrs().Index {
		return fmt.Errorf("%s is not in bridge %s of EVE network instance %s", hl.Attrs().Name, ni.Status.BridgeName, ni.Name())
	}
	if err := checkGuard(hl.Attrs().Name); err != nil {
		return err
	}
	var want net.IP
	if ni.Status.Type == NITypeLocal {
		alloc := Allocator{Dir: filepath.Join(set.StateDir, ni.Status.UUID.String())}
		if want, err = alloc.Lookup(Owner{ContainerID: args.ContainerID, IfName: args.IfName}); err != nil {
			return err
		}
		if want == nil {
			return fmt.Errorf("no address allocated to %s on EVE network instance %s", args.IfName, ni.Name())
		}
	}
	return ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
		l, err := netlink.LinkByName(args.IfName)
		if err != nil {
			return fmt.Errorf("pod interface %s: %w", args.IfName, err)
		}
		if want == nil {
			return nil
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if a.IP.Equal(want) {
				return nil
			}
		}
		return fmt.Errorf("pod interface %s lost its address %s", args.IfName, want)
	})
}

// Status says whether the plugin can serve ADDs (CNI STATUS): its settings
// load and EVE's NI directory is readable.
func Status(args *skel.CmdArgs) error {
	_, set, err := load(args.StdinData)
	if err != nil {
		return err
	}
	_, err = ReadNIs(set.EVERun)
	return err
}

// GC frees addresses of attachments the runtime no longer knows (CNI GC)
// on the NI this network names, and only there: the valid attachments a
// runtime sends are those of this network, so another NI's addresses
// (held by pods of other networks) are not this call's to judge. It
// passes GC on to a Switch NI's IPAM plugin.
func GC(args *skel.CmdArgs) error {
	conf, set, err := load(args.StdinData)
	if err != nil {
		return err
	}
	nis, err := ReadNIs(set.EVERun)
	if err != nil {
		return err
	}
	for key, st := range nis {
		if !Matches(conf.NetworkInstance, key, st) {
			continue
		}
		a := Allocator{Dir: filepath.Join(set.StateDir, st.UUID.String())}
		if _, err := os.Stat(a.Dir); err != nil {
			continue
		}
		if _, err := a.GC(conf.ValidAttachments); err != nil {
			return err
		}
	}
	if err := gcGuards(); err != nil {
		return err
	}
	if conf.checkIPAM() == nil && conf.IPAM.Type != "" && ipamKnowsGC(conf.IPAM.Type) {
		return invoke.DelegateGC(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
	}
	return nil
}

// ipamKnowsGC: IPAM plugins older than CNI 1.1 (Debian's) know no GC.
func ipamKnowsGC(plugin string) bool {
	path, err := invoke.FindInPath(plugin, filepath.SplitList(os.Getenv("CNI_PATH")))
	if err != nil {
		return false
	}
	vi, err := invoke.GetVersionInfo(context.TODO(), path, nil)
	return err == nil && slices.Contains(vi.SupportedVersions(), "1.1.0")
}
