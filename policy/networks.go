package policy

import (
	"bytes"
	"fmt"
	"net"
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
