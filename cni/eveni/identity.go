package eveni

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/lf-edge/evelet/eve/pubsub"
)

// The identity a pod's interface has on an NI bridge (its MAC and
// addresses) is what the anti-spoofing guard then holds it to: so the
// tenant must not choose one that belongs to someone else there. Addresses
// come from the owner's range (Local NIs: the allocator; Switch NIs: the
// grant's range, or DHCP only); a MAC may not be multicast, the bridge's,
// an EVE app's, or already on the bridge (another pod's, an app's, a port's).

// appAdapter is the part of pillar's types.AppNetAdapterConfig
// (types/zedroutertypes.go) eve-ni reads: the static MAC and IP the owner
// configured for an app's interface on an NI. AppMacAddr is a
// net.HardwareAddr, which encoding/json writes as base64.
type appAdapter struct {
	Name       string
	AppMacAddr net.HardwareAddr
	AppIPAddr  net.IP
	Network    string // the NI's UUID
}

// appNetworkConfig is the part of pillar's types.AppNetworkConfig that
// zedmanager publishes, one file per app UUID, under
// <EVERun>/zedmanager/AppNetworkConfig/.
type appNetworkConfig struct {
	DisplayName       string
	AppNetAdapterList []appAdapter
}

// appAdapters returns the app interfaces the device's app network config
// puts on NI niUUID. A file that does not decode is an error: skipping it
// could hand a pod an app's static address.
func appAdapters(eveRun, niUUID string) ([]appAdapter, error) {
	dir := pubsub.Root{Run: eveRun}.TopicDir("zedmanager", "AppNetworkConfig")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []appAdapter
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("EVE app network config: %w", err)
		}
		c, err := pubsub.Decode[appNetworkConfig](p, b)
		if err != nil {
			return nil, fmt.Errorf("EVE app network config: %w", err)
		}
		for _, a := range c.AppNetAdapterList {
			if strings.EqualFold(a.Network, niUUID) {
				out = append(out, a)
			}
		}
	}
	return out, nil
}

// checkMAC refuses a requested MAC that is not the pod's to take on ni.
func checkMAC(ni *NI, mac net.HardwareAddr, apps []appAdapter) error {
	refuse := func(why string) error {
		return fmt.Errorf("requested MAC %s %s; a pod's MAC must be its own (anti-spoofing)", mac, why)
	}
	if len(mac) != 6 || mac[0]&1 != 0 {
		return refuse("is not a unicast Ethernet address")
	}
	if bytes.Equal(mac, ni.Status.BridgeMac) {
		return refuse("is the NI bridge's")
	}
	for k := range ni.Status.IPAssignments {
		if hw, err := net.ParseMAC(k); err == nil && bytes.Equal(hw, mac) {
			return refuse("is an EVE app's (NetworkInstanceStatus.IPAssignments)")
		}
	}
	for _, a := range apps {
		if bytes.Equal(a.AppMacAddr, mac) {
			return refuse(fmt.Sprintf("is EVE app interface %q's (app network config)", a.Name))
		}
	}
	br, err := netlink.LinkByName(ni.Status.BridgeName)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", ni.Status.BridgeName, err)
	}
	if bytes.Equal(br.Attrs().HardwareAddr, mac) {
		return refuse("is the NI bridge's")
	}
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	ports := map[int]bool{}
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			ports[l.Attrs().Index] = true
			if bytes.Equal(l.Attrs().HardwareAddr, mac) {
				return refuse(fmt.Sprintf("is bridge port %s's", l.Attrs().Name))
			}
		}
	}
	// The bridge's forwarding database: every MAC seen behind a port (an
	// app's guest NIC, another pod, a host on a Switch NI's network).
	fdb, err := netlink.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("reading the forwarding database of %s: %w", ni.Status.BridgeName, err)
	}
	for _, n := range fdb {
		if (ports[n.LinkIndex] || n.MasterIndex == br.Attrs().Index) && bytes.Equal(n.HardwareAddr, mac) {
			return refuse(fmt.Sprintf("is in use on bridge %s (its forwarding database has it)", ni.Status.BridgeName))
		}
	}
	return nil
}

// checkSwitchIPAM says whether a Switch NI attachment may use the NAD's
// IPAM: with a range from the owner, static addresses must lie in it (and
// dhcp is fine); without one, the owner said DHCP only.
func checkSwitchIPAM(ni *NI, ipamType string) error {
	if ni.Grant.ReservedStart != nil {
		if ipamType == "" {
			return fmt.Errorf("EVE network instance %s: a pod needs an address (ipam static in the owner's range %s-%s, or dhcp); an interface without one is not held to any", ni.Name(), ni.Grant.ReservedStart, ni.Grant.ReservedEnd)
		}
		return nil
	}
	if ipamType != "dhcp" {
		return fmt.Errorf("EVE network instance %s: the device owner gave this Switch NI without an address range (evelet.policy.network-instances entry %q), so pods get addresses by DHCP only (\"ipam\": {\"type\": \"dhcp\"})", ni.Name(), ni.Grant.NetworkInstance)
	}
	return nil
}

// checkSwitchAddrs refuses IPAM results outside the owner's range of a
// Switch NI (a static address equal to another host's on that network).
func checkSwitchAddrs(ni *NI, ipamType string, ips []net.IP) error {
	if ni.Grant.ReservedStart == nil || ipamType == "dhcp" {
		return nil
	}
	lo, hi := u32(ni.Grant.ReservedStart), u32(ni.Grant.ReservedEnd)
	for _, ip := range ips {
		v4 := ip.To4()
		if v4 == nil {
			return fmt.Errorf("address %s: only IPv4 addresses from the owner's range %s-%s", ip, ni.Grant.ReservedStart, ni.Grant.ReservedEnd)
		}
		if u32(v4) < lo || u32(v4) > hi {
			return fmt.Errorf("address %s is outside the range %s-%s the device owner reserved on this Switch NI", ip, ni.Grant.ReservedStart, ni.Grant.ReservedEnd)
		}
	}
	return nil
}
