package policy

import (
	"bytes"
	"fmt"
	"net"
	"regexp"
	"strings"
)

// KeyNetworkInstances lists the EVE network instances (NIs) Kubernetes pods
// may attach to through the eve-ni CNI plugin. Entries, comma separated:
//
//	<ni>                 a Switch NI (EVE gives no addresses on it)
//	<ni>=<start>-<end>   a Local NI and the IPv4 range, inside the NI's
//	                     subnet and outside its DhcpRange, that the owner
//	                     reserves for pods
//
// <ni> is the NI's display name (blanks inside are kept; a name with ","
// or "=" must be given by UUID) or UUID. Empty (the default): no NI.
const KeyNetworkInstances = KeyPrefix + "network-instances"

// NetworkInstanceGrant is one parsed entry of KeyNetworkInstances.
type NetworkInstanceGrant struct {
	// NI is the display name or UUID the owner wrote.
	NI string `json:"networkInstance"`
	// ReservedStart and ReservedEnd bound the owner's range for pods on a
	// Local NI; both nil for an entry without a range.
	ReservedStart net.IP `json:"reservedStart,omitempty"`
	ReservedEnd   net.IP `json:"reservedEnd,omitempty"`
}

// String is the normalized entry form.
func (g NetworkInstanceGrant) String() string {
	if g.ReservedStart == nil {
		return g.NI
	}
	return fmt.Sprintf("%s=%s-%s", g.NI, g.ReservedStart, g.ReservedEnd)
}

// ParseNetworkInstanceGrant parses one KeyNetworkInstances entry. Whether
// the range fits the NI is only known on the device, when a pod asks
// (cni/eveni checks it there).
func ParseNetworkInstanceGrant(e string) (NetworkInstanceGrant, error) {
	name, rng, hasRange := strings.Cut(strings.TrimSpace(e), "=")
	name = strings.TrimSpace(name)
	if name == "" {
		return NetworkInstanceGrant{}, fmt.Errorf("no network instance name or UUID")
	}
	g := NetworkInstanceGrant{NI: name}
	if !hasRange {
		return g, nil
	}
	a, b, ok := strings.Cut(rng, "-")
	start, end := net.ParseIP(strings.TrimSpace(a)).To4(), net.ParseIP(strings.TrimSpace(b)).To4()
	if !ok || start == nil || end == nil {
		return NetworkInstanceGrant{}, fmt.Errorf(`want "<ni>=<first IPv4>-<last IPv4>"`)
	}
	if bytes.Compare(start, end) > 0 {
		return NetworkInstanceGrant{}, fmt.Errorf("range %s-%s ends before it starts", start, end)
	}
	g.ReservedStart, g.ReservedEnd = start, end
	return g, nil
}

func parseNetworkInstance(e string) (string, error) {
	g, err := ParseNetworkInstanceGrant(e)
	if err != nil {
		return "", err
	}
	return g.String(), nil
}

// NetworkInstanceGrants returns the parsed AllowedNetworkInstances (entries
// are normalized when the config item is read, so none fails here; a
// duplicate NI keeps its first entry).
func (p Policy) NetworkInstanceGrants() []NetworkInstanceGrant {
	var out []NetworkInstanceGrant
	seen := map[string]bool{}
	for _, e := range p.AllowedNetworkInstances {
		g, err := ParseNetworkInstanceGrant(e)
		if err != nil || seen[g.NI] {
			continue
		}
		seen[g.NI] = true
		out = append(out, g)
	}
	return out
}

// Config items for the NetworkAttachmentDefinition rules evelet-cni
// applies (cni/nad.Rules). Unset (or empty): the agent's flags apply
// (--cni-allowed-plugins, --cni-allowed-ipam, --cni-shared-namespaces),
// whose defaults are eve-ni only, static/dhcp/host-local, and no shared
// namespace. "none" sets an empty list.
const (
	// KeyCNIPlugins lists the CNI plugin types a NAD may use.
	KeyCNIPlugins = KeyPrefix + "cni-plugins"
	// KeyCNIIPAM lists the IPAM plugin types a NAD may use.
	KeyCNIIPAM = KeyPrefix + "cni-ipam"
	// KeyCNISharedNamespaces lists namespaces whose NADs any pod may use.
	KeyCNISharedNamespaces = KeyPrefix + "cni-shared-namespaces"
)

// NetworkRules are the owner's NAD rules from config items; a nil list
// means the item is not set.
type NetworkRules struct {
	CNIPluginTypes      []string
	CNIIPAMTypes        []string
	CNISharedNamespaces []string
}

var (
	cniTypeName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)
	nsName      = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
)

// applyNetworkKey applies one of the NAD rule keys; ok is false for other
// keys.
func applyNetworkKey(r *NetworkRules, key, v string) (ok bool, err error) {
	var dst *[]string
	var entry func(string) (string, error)
	switch key {
	case KeyCNIPlugins, KeyCNIIPAM:
		dst = &r.CNIPluginTypes
		if key == KeyCNIIPAM {
			dst = &r.CNIIPAMTypes
		}
		entry = func(e string) (string, error) {
			if !cniTypeName.MatchString(e) {
				return "", fmt.Errorf("not a CNI plugin type (a binary name)")
			}
			if e == "evelet-cni" {
				return "", fmt.Errorf("evelet-cni cannot be a delegate")
			}
			return e, nil
		}
	case KeyCNISharedNamespaces:
		dst = &r.CNISharedNamespaces
		entry = func(e string) (string, error) {
			if !nsName.MatchString(e) {
				return "", fmt.Errorf("not a namespace name")
			}
			return e, nil
		}
	default:
		return false, nil
	}
	if strings.TrimSpace(v) == "none" {
		*dst = []string{}
		return true, nil
	}
	var out []string
	if err := parseList(v, &out, entry); err != nil {
		*dst = nil
		return true, err
	}
	*dst = out
	return true, nil
}

func (r NetworkRules) clone() NetworkRules {
	return NetworkRules{CNIPluginTypes: clone(r.CNIPluginTypes), CNIIPAMTypes: clone(r.CNIIPAMTypes), CNISharedNamespaces: clone(r.CNISharedNamespaces)}
}

// clone keeps nil nil and an empty list empty.
func clone(l []string) []string {
	if l == nil {
		return nil
	}
	return append([]string{}, l...)
}
