// Package eveni is the eve-ni CNI plugin: it attaches a pod interface to an
// EVE network instance (NI) that zedrouter made, found by display name or
// UUID in zedrouter's NetworkInstanceStatus. A Local NI gets a veth in its
// bridge and an address from the range the device owner reserved for
// Kubernetes (never from EVE's DhcpRange, whose addresses EVE hands out
// deterministically to its own apps); a Switch NI gets a veth in its bridge
// and whatever IPAM the NetworkAttachmentDefinition names. Only the NIs the
// device owner lists in evelet.policy.network-instances are usable; the
// agent writes that list into the plugin's settings file.
package eveni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/lf-edge/evelet/cni/tenantjson"
)

// DefaultSettingsPath is where the agent writes Settings on a device
// (<run-dir>/eve-ni.json with the default run dir).
const DefaultSettingsPath = "/run/evelet/eve-ni.json"

// Settings is the plugin's own configuration, written by the agent from
// the owner's config items (agent/eveni.go).
type Settings struct {
	// EVERun is EVE's /run: NIs are read from
	// <EVERun>/zedrouter/NetworkInstanceStatus/.
	EVERun string `json:"eveRun"`
	// StateDir holds the address allocations, one directory per NI UUID;
	// it must survive a reboot (<state-root>/cni/eve-ni).
	StateDir string `json:"stateDir"`
	// Allowed are the NIs Kubernetes may use. Empty: none.
	Allowed []Grant `json:"allowed"`
	// DHCPSocket is the CNI dhcp daemon's socket for Switch NIs with
	// dhcp IPAM (default DefaultDHCPSocket). A NAD cannot choose it.
	DHCPSocket string `json:"dhcpSocket,omitempty"`
}

// DefaultDHCPSocket is the CNI dhcp daemon's default socket.
const DefaultDHCPSocket = "/run/cni/dhcp.sock"

// dhcpSocket is where the CNI dhcp daemon listens.
func (s *Settings) dhcpSocket() string {
	if s.DHCPSocket != "" {
		return s.DHCPSocket
	}
	return DefaultDHCPSocket
}

// Grant is one NI the device owner gives to Kubernetes.
type Grant struct {
	// NetworkInstance is the NI's display name or UUID.
	NetworkInstance string `json:"networkInstance"`
	// ReservedStart..ReservedEnd (IPv4, inclusive) is the owner's range for
	// pods on a Local NI; unset for a Switch NI.
	ReservedStart net.IP `json:"reservedStart,omitempty"`
	ReservedEnd   net.IP `json:"reservedEnd,omitempty"`
}

// LoadSettings reads and checks a settings file.
func LoadSettings(path string) (*Settings, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("eve-ni settings %s do not exist: is the evelet agent running? (it writes them)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("eve-ni settings: %w", err)
	}
	var s Settings
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("eve-ni settings %s: %w", path, err)
	}
	if s.EVERun == "" || s.StateDir == "" {
		return nil, fmt.Errorf("eve-ni settings %s: eveRun and stateDir are required", path)
	}
	return &s, nil
}

// NetConf is the plugin's network configuration, the NAD's spec.config:
//
//	{"cniVersion":"1.1.0","name":"eve-local","type":"eve-ni",
//	 "networkInstance":"<display name or UUID>","defaultRoute":false,
//	 "ipam":{...Switch NI only}}
//
// The mac and ips capabilities arrive in runtimeConfig.
type NetConf struct {
	types.NetConf
	NetworkInstance string `json:"networkInstance"`
	// DefaultRoute adds a default route through this interface (the Local
	// NI's gateway; for a Switch NI, the IPAM result's default route, which
	// is dropped otherwise).
	DefaultRoute bool `json:"defaultRoute,omitempty"`
	// SettingsFile overrides DefaultSettingsPath (tests).
	SettingsFile  string        `json:"eveniConfig,omitempty"`
	RuntimeConfig RuntimeConfig `json:"runtimeConfig,omitempty"`

	raw []byte
}

// RuntimeConfig carries the CNI capabilities the plugin supports.
type RuntimeConfig struct {
	// Mac is the pod interface's MAC address ("mac" capability).
	Mac string `json:"mac,omitempty"`
	// IPs are requested addresses in CIDR form ("ips" capability).
	IPs []string `json:"ips,omitempty"`
}

// ParseNetConf decodes and checks a plugin configuration.
func ParseNetConf(stdin []byte) (*NetConf, error) {
	// The configuration is a tenant's NAD: two keys that Go reads as one
	// (any letter case) would make whatever checked the first key moot.
	if err := tenantjson.CheckKeys(stdin); err != nil {
		return nil, fmt.Errorf("eve-ni: network configuration: %w", err)
	}
	var c NetConf
	if err := json.Unmarshal(stdin, &c); err != nil {
		return nil, fmt.Errorf("eve-ni: network configuration is not valid JSON: %w", err)
	}
	c.raw = stdin
	if c.NetworkInstance == "" {
		return nil, fmt.Errorf("eve-ni: networkInstance (an EVE network instance's display name or UUID) is required")
	}
	if c.RuntimeConfig.Mac != "" {
		hw, err := net.ParseMAC(c.RuntimeConfig.Mac)
		if err != nil {
			return nil, fmt.Errorf("eve-ni: runtimeConfig.mac %q: %w", c.RuntimeConfig.Mac, err)
		}
		if len(hw) != 6 || hw[0]&1 != 0 {
			return nil, fmt.Errorf("eve-ni: runtimeConfig.mac %q: not a unicast Ethernet address", c.RuntimeConfig.Mac)
		}
	}
	for _, ip := range c.RuntimeConfig.IPs {
		if _, _, err := net.ParseCIDR(ip); err != nil {
			if net.ParseIP(ip) == nil {
				return nil, fmt.Errorf("eve-ni: runtimeConfig.ips entry %q is not an address", ip)
			}
		}
	}
	if c.SettingsFile == "" {
		c.SettingsFile = DefaultSettingsPath
	}
	// evelet-cni sets it to the node's file; a relative or unclean path
	// is not one it writes (a relative one resolves against the host's
	// working directory).
	if !filepath.IsAbs(c.SettingsFile) || filepath.Clean(c.SettingsFile) != c.SettingsFile {
		return nil, fmt.Errorf("eve-ni: eveniConfig %q is not a clean absolute path", c.SettingsFile)
	}
	return &c, nil
}

// requestedIPv4 is the first IPv4 address of the ips capability, nil if none.
func (c *NetConf) requestedIPv4() net.IP {
	for _, s := range c.RuntimeConfig.IPs {
		ip, _, err := net.ParseCIDR(s)
		if err != nil {
			ip = net.ParseIP(s)
		}
		if v4 := ip.To4(); v4 != nil {
			return v4
		}
	}
	return nil
}

// ipamVersion is the CNI version the IPAM delegate is called with: the
// IPAM plugins packaged with distributions (Debian 12: 1.1.1) stop at
// 1.0.0, whose results are the same as 1.1.0's.
const ipamVersion = "1.0.0"

// ipamStdin is the network configuration for the IPAM delegate; dhcp
// gets the node's daemon socket.
func (c *NetConf) ipamStdin(set *Settings) ([]byte, error) {
	var m map[string]any
	if err := json.Unmarshal(c.raw, &m); err != nil {
		return nil, err
	}
	m["cniVersion"] = ipamVersion
	iv, _ := tenantjson.Get(m, "ipam")
	if im, ok := iv.(map[string]any); ok && c.IPAM.Type == "dhcp" {
		tenantjson.Set(im, "daemonSocketPath", set.dhcpSocket())
	}
	return json.Marshal(m)
}

// checkIPAM allows only the IPAM plugins that act inside the pod's netns
// and the node's own services: others (host-local with its dataDir, say)
// would let a NAD write where the device owner did not allow.
func (c *NetConf) checkIPAM() error {
	switch c.IPAM.Type {
	case "", "static":
		return nil
	case "dhcp":
		var v struct {
			IPAM map[string]any `json:"ipam"`
		}
		_ = json.Unmarshal(c.raw, &v)
		if _, set := tenantjson.Get(v.IPAM, "daemonSocketPath"); set {
			return fmt.Errorf("ipam dhcp: daemonSocketPath is the node's to set, not the network configuration's")
		}
		return nil
	}
	return fmt.Errorf("ipam %q is not supported on an EVE Switch NI: use static, dhcp or none", c.IPAM.Type)
}
