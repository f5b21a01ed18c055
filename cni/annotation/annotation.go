// Package annotation parses and renders the pod annotations of the Network
// Plumbing WG's "Kubernetes Network Custom Resource Definition De-facto
// Standard" (v1.3): the networks a pod asks for
// (k8s.v1.cni.cncf.io/networks) and what it got
// (k8s.v1.cni.cncf.io/network-status).
//
// The parser is strict: the annotation is written by a tenant, so anything
// the spec does not allow (and any key it does not name) is an error that
// names the offending element, rather than something silently ignored.
package annotation

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"slices"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/lf-edge/evelet/cni/tenantjson"
)

const (
	// NetworksKey is the network attachment selection annotation.
	NetworksKey = "k8s.v1.cni.cncf.io/networks"
	// StatusKey is the network status annotation.
	StatusKey = "k8s.v1.cni.cncf.io/network-status"

	// MaxNetworks bounds the attachments of one pod: each costs a delegate
	// run at sandbox creation, so an unbounded list is a cheap way to stall
	// the node.
	MaxNetworks = 32
)

// Selection is one "network selection element" of the spec. Namespace
// and Interface are always filled after Parse.
type Selection struct {
	Name           string   `json:"name"`
	Namespace      string   `json:"namespace,omitempty"`
	Interface      string   `json:"interface,omitempty"`
	IPs            []string `json:"ips,omitempty"`
	MAC            string   `json:"mac,omitempty"`
	InfinibandGUID string   `json:"infiniband-guid,omitempty"`
	DefaultRoute   []string `json:"default-route,omitempty"`
	// HasDefaultRoute is true when the element carries "default-route",
	// also as an empty list (the spec allows it: the network's own
	// gateways then carry the default route).
	HasDefaultRoute bool `json:"-"`
	// Ignored are keys the element carries that evelet does not act on but
	// the spec lets implementations add or define ("ipam-claim-reference",
	// extension keys with a '.'): accepted, and named in a warning.
	Ignored      []string       `json:"-"`
	CNIArgs      map[string]any `json:"cni-args,omitempty"`
	PortMappings []PortMapping  `json:"portMappings,omitempty"`
	Bandwidth    *Bandwidth     `json:"bandwidth,omitempty"`
}

// PortMapping is the CNI "portMappings" capability's element.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"`
	HostIP        string `json:"hostIP,omitempty"`
}

// Bandwidth is the CNI "bandwidth" capability.
type Bandwidth struct {
	IngressRate  int64 `json:"ingressRate,omitempty"`
	IngressBurst int64 `json:"ingressBurst,omitempty"`
	EgressRate   int64 `json:"egressRate,omitempty"`
	EgressBurst  int64 `json:"egressBurst,omitempty"`
}

// Ref is "namespace/name", how the spec names a network in network-status.
func (s Selection) Ref() string { return s.Namespace + "/" + s.Name }

// Parse parses the value of NetworksKey for a pod in podNamespace.
// defaultIfname is the interface of the default network (eth0), which no
// selection may take. An empty value yields no selections.
func Parse(value, podNamespace, defaultIfname string) ([]Selection, error) {
	v := strings.TrimSpace(value)
	if v == "" {
		return nil, nil
	}
	var sels []Selection
	var err error
	if strings.HasPrefix(v, "[") {
		sels, err = parseJSON(v)
	} else if strings.HasPrefix(v, "{") {
		return nil, fmt.Errorf("%s: a JSON value must be a list of network selection elements ([{...}]), not a single object", NetworksKey)
	} else {
		sels, err = parseShort(v)
	}
	if err != nil {
		return nil, err
	}
	if len(sels) == 0 {
		// "[]": the spec's empty list, no network besides the default.
		return nil, nil
	}
	if len(sels) > MaxNetworks {
		return nil, fmt.Errorf("%s: %d networks asked for, at most %d are allowed", NetworksKey, len(sels), MaxNetworks)
	}
	seen := map[string]int{}
	if defaultIfname != "" {
		seen[defaultIfname] = 0
	}
	for i := range sels {
		s := &sels[i]
		if s.Namespace == "" {
			s.Namespace = podNamespace
		}
		// Spec: without an interface name the implementation picks one;
		// evelet-cni uses net<position>, as the reference implementation does.
		if s.Interface == "" {
			s.Interface = fmt.Sprintf("net%d", i+1)
		}
		if err := s.validate(); err != nil {
			return nil, fmt.Errorf("%s: network %d (%q): %w", NetworksKey, i+1, s.Name, err)
		}
		if j, dup := seen[s.Interface]; dup {
			other := "the default network"
			if j > 0 {
				other = fmt.Sprintf("network %d (%q)", j, sels[j-1].Name)
			}
			return nil, fmt.Errorf("%s: network %d (%q): interface %q is already used by %s", NetworksKey, i+1, s.Name, s.Interface, other)
		}
		seen[s.Interface] = i + 1
	}
	// Spec 4.1.2.1.9: only one attachment may specify "default-route".
	claim := 0
	for i := range sels {
		if !sels[i].HasDefaultRoute {
			continue
		}
		if claim > 0 {
			return nil, fmt.Errorf("%s: network %d (%q) and network %d (%q) both set \"default-route\": only one network of a pod may carry the default route", NetworksKey, claim, sels[claim-1].Name, i+1, sels[i].Name)
		}
		claim = i + 1
	}
	return sels, nil
}

// parseShort parses the comma form: [namespace/]name[@interface], ...
func parseShort(v string) ([]Selection, error) {
	var out []Selection
	for i, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return nil, fmt.Errorf("%s: element %d of the comma-separated list is empty", NetworksKey, i+1)
		}
		var s Selection
		rest := item
		if ns, name, ok := strings.Cut(rest, "/"); ok {
			if ns == "" {
				return nil, fmt.Errorf("%s: %q: empty namespace before '/'", NetworksKey, item)
			}
			s.Namespace, rest = ns, name
		}
		if name, ifname, ok := strings.Cut(rest, "@"); ok {
			if ifname == "" {
				return nil, fmt.Errorf("%s: %q: empty interface name after '@'", NetworksKey, item)
			}
			rest, s.Interface = name, ifname
		}
		if rest == "" {
			return nil, fmt.Errorf("%s: %q: no network name", NetworksKey, item)
		}
		s.Name = rest
		out = append(out, s)
	}
	return out, nil
}

// ignoredKey: keys the spec allows that evelet-cni accepts and does not
// act on: "ipam-claim-reference" (v1.3, for IPAM claims evelet has no
// IPAM for) and implementation extensions, which the spec names with a
// '.' (a domain).
func ignoredKey(k string) bool {
	return k == "ipam-claim-reference" || strings.Contains(k, ".")
}

func parseJSON(v string) ([]Selection, error) {
	var elems []map[string]json.RawMessage
	if err := json.Unmarshal([]byte(v), &elems); err == nil {
		var ignored [][]string
		for _, el := range elems {
			var ig []string
			for k := range el {
				if ignoredKey(k) {
					ig = append(ig, k)
					delete(el, k)
				}
			}
			sort.Strings(ig)
			ignored = append(ignored, ig)
		}
		if slices.ContainsFunc(ignored, func(ig []string) bool { return len(ig) > 0 }) {
			stripped, err := json.Marshal(elems)
			if err == nil {
				if err := tenantjson.CheckKeys([]byte(v)); err != nil {
					return nil, fmt.Errorf("%s: %w", NetworksKey, err)
				}
				sels, err := parseJSON(string(stripped))
				if err != nil {
					return nil, err
				}
				for i := range sels {
					sels[i].Ignored = ignored[i]
				}
				return sels, nil
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(v)))
	dec.DisallowUnknownFields()
	var sels []Selection
	if err := dec.Decode(&sels); err != nil {
		return nil, fmt.Errorf("%s: not a valid JSON list of network selection elements: %v", NetworksKey, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%s: trailing data after the JSON list", NetworksKey)
	}
	// Go matches keys in any letter case ("MAC" is "mac"), the last one
	// winning: two keys that are one to the decoder are refused.
	if err := tenantjson.CheckKeys([]byte(v)); err != nil {
		return nil, fmt.Errorf("%s: %w", NetworksKey, err)
	}
	// Which elements carry "default-route" at all: an empty list is a
	// choice too, which []string cannot tell from an absent key.
	var keys []map[string]json.RawMessage
	if err := json.Unmarshal([]byte(v), &keys); err != nil || len(keys) != len(sels) {
		return nil, fmt.Errorf("%s: not a valid JSON list of network selection elements", NetworksKey)
	}
	for i, s := range sels {
		if s.Name == "" {
			return nil, fmt.Errorf("%s: element %d has no \"name\" (required by the spec)", NetworksKey, i+1)
		}
		if raw, ok := rawKey(keys[i], "default-route"); ok && string(bytes.TrimSpace(raw)) != "null" {
			sels[i].HasDefaultRoute = true
		}
	}
	return sels, nil
}

func rawKey(m map[string]json.RawMessage, key string) (json.RawMessage, bool) {
	for k, v := range m {
		if tenantjson.EqualKey(k, key) {
			return v, true
		}
	}
	return nil, false
}

// ArgsDenied are the keys of "args":{"cni":{...}} (a pod's cni-args, or
// a NAD's own args) that plugins read as the interface's identity or its
// kernel settings: static IPAM's "ips", tuning's "mac", "sysctl",
// "promisc" and the like. The selection's own "ips" and "mac" go through
// the capability checks and the plugin's rules; these would go around
// them, so they are refused in any letter case.
var ArgsDenied = []string{"ips", "ip", "mac", "gateway", "sysctl", "promisc", "allmulti", "mtu", "txQLen", "infinibandGUID"}

// DeniedArg returns the first key of m that ArgsDenied names in any
// letter case, "" if none.
func DeniedArg(m map[string]any) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, d := range ArgsDenied {
			if tenantjson.EqualKey(k, d) {
				return k
			}
		}
	}
	return ""
}

func (s *Selection) validate() error {
	// A NAD is a namespaced API object: its name is a DNS-1123 subdomain,
	// its namespace a DNS-1123 label.
	if errs := validation.IsDNS1123Subdomain(s.Name); len(errs) > 0 {
		return fmt.Errorf("invalid network name %q: %s", s.Name, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Label(s.Namespace); len(errs) > 0 {
		return fmt.Errorf("invalid namespace %q: %s", s.Namespace, strings.Join(errs, "; "))
	}
	if err := ValidIfname(s.Interface); err != nil {
		return err
	}
	if s.MAC != "" {
		hw, err := net.ParseMAC(s.MAC)
		if err != nil || len(hw) != 6 {
			return fmt.Errorf("invalid mac %q: want a 48-bit MAC address such as 02:00:00:00:00:01", s.MAC)
		}
		if hw[0]&1 != 0 {
			return fmt.Errorf("invalid mac %q: a multicast address cannot be an interface's address", s.MAC)
		}
	}
	if s.InfinibandGUID != "" {
		if hw, err := net.ParseMAC(s.InfinibandGUID); err != nil || len(hw) != 8 {
			return fmt.Errorf("invalid infiniband-guid %q: want 8 bytes such as 00:11:22:33:44:55:66:77", s.InfinibandGUID)
		}
	}
	for _, ip := range s.IPs {
		if _, _, err := net.ParseCIDR(ip); err != nil && net.ParseIP(ip) == nil {
			return fmt.Errorf("invalid ips entry %q: want an address, optionally with a prefix length (10.1.1.11/24)", ip)
		}
	}
	for _, gw := range s.DefaultRoute {
		if net.ParseIP(gw) == nil {
			return fmt.Errorf("invalid default-route entry %q: want a gateway IP address", gw)
		}
	}
	for _, pm := range s.PortMappings {
		if pm.HostPort < 1 || pm.HostPort > 65535 || pm.ContainerPort < 1 || pm.ContainerPort > 65535 {
			return fmt.Errorf("invalid portMappings entry %+v: ports must be 1-65535", pm)
		}
		switch strings.ToLower(pm.Protocol) {
		case "", "tcp", "udp", "sctp":
		default:
			return fmt.Errorf("invalid portMappings protocol %q: want tcp, udp or sctp", pm.Protocol)
		}
		if pm.HostIP != "" && net.ParseIP(pm.HostIP) == nil {
			return fmt.Errorf("invalid portMappings hostIP %q", pm.HostIP)
		}
	}
	if k := DeniedArg(s.CNIArgs); k != "" {
		return fmt.Errorf("cni-args %q: sets the interface's identity or kernel settings, which cni-args may not (use \"mac\"/\"ips\", which the network's plugins check)", k)
	}
	if b := s.Bandwidth; b != nil {
		if err := b.validate(); err != nil {
			return fmt.Errorf("invalid bandwidth %+v: %w", *b, err)
		}
	}
	return nil
}

// validate applies the bandwidth plugin's own rules before ADD: it
// refuses a rate without a burst (and the reverse) on ADD and again on
// every DEL, so a request it refuses would make the sandbox undeletable.
func (b Bandwidth) validate() error {
	if b.IngressRate < 0 || b.IngressBurst < 0 || b.EgressRate < 0 || b.EgressBurst < 0 {
		return fmt.Errorf("rates and bursts cannot be negative")
	}
	for _, d := range []struct {
		dir         string
		rate, burst int64
	}{{"ingress", b.IngressRate, b.IngressBurst}, {"egress", b.EgressRate, b.EgressBurst}} {
		switch {
		case d.rate > 0 && d.burst == 0:
			return fmt.Errorf("%sRate needs %sBurst as well (the bandwidth plugin refuses a rate without a burst)", d.dir, d.dir)
		case d.burst > 0 && d.rate == 0:
			return fmt.Errorf("%sBurst needs %sRate as well (the bandwidth plugin refuses a burst without a rate)", d.dir, d.dir)
		case d.burst/8 >= math.MaxUint32:
			return fmt.Errorf("%sBurst is more than 4 GB, which the bandwidth plugin refuses", d.dir)
		}
	}
	return nil
}

// ValidIfname checks a Linux interface name: 1-15 bytes, not "." or "..",
// no '/', ':' or white space (the kernel's dev_valid_name), and not "lo".
func ValidIfname(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty interface name")
	case len(name) > 15:
		return fmt.Errorf("interface name %q is longer than 15 bytes", name)
	case name == "." || name == "..":
		return fmt.Errorf("interface name %q is not allowed", name)
	case name == "lo":
		return fmt.Errorf("interface name %q is the loopback interface", name)
	}
	for _, c := range name {
		if c == '/' || c == ':' || c <= ' ' || c == 0x7f || c > 0x7e {
			return fmt.Errorf("interface name %q: contains %q (no '/', ':', white space or non-ASCII)", name, c)
		}
	}
	return nil
}
