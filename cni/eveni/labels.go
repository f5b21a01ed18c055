package eveni

import (
	"sort"
	"strings"

	"github.com/lf-edge/evelet/eve/pubsub"
)

// LabelPrefix is the node label prefix for NIs pods may attach to.
const LabelPrefix = "network.eve.lf-edge.org/"

// LabelName turns an NI's display name into a label name (the part after
// the prefix): lower case, every character other than a-z, 0-9, '-', '_'
// and '.' becomes '-', leading and trailing non-alphanumerics are dropped,
// and it is cut to 63 characters. A display name with nothing left gives
// the NI's UUID. Two NIs may give the same name ("LAN" and "lan"): the
// label then says one of them is there.
func LabelName(displayName string, uuid pubsub.UUID) string {
	var b strings.Builder
	for _, r := range strings.ToLower(displayName) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	s := trimNonAlnum(b.String())
	if len(s) > 63 {
		s = trimNonAlnum(s[:63])
	}
	if s == "" {
		return uuid.String()
	}
	return s
}

func trimNonAlnum(s string) string {
	return strings.TrimFunc(s, func(r rune) bool {
		return (r < 'a' || r > 'z') && (r < '0' || r > '9')
	})
}

// NodeLabels are the labels for the NIs pods on this device may attach to
// now: activated, Local or Switch, and given to Kubernetes by the owner.
func NodeLabels(nis map[string]pubsub.NetworkInstanceStatus, allowed []Grant) map[string]string {
	s := Settings{Allowed: allowed}
	out := map[string]string{}
	keys := make([]string, 0, len(nis))
	for k := range nis {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		st := nis[k]
		if !st.Activated || (st.Type != pubsub.NetworkInstanceTypeLocal && st.Type != pubsub.NetworkInstanceTypeSwitch) {
			continue
		}
		if _, ok := s.GrantFor(k, st); !ok {
			continue
		}
		out[LabelPrefix+LabelName(st.DisplayName, st.UUID)] = "true"
	}
	return out
}
