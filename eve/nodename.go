// Package eve is the agent's EVE channel: it turns what zedagent publishes
// (pubsub topics, the checkpointed EdgeDevConfig, the encrypted cluster
// token) into join intent for the agent.
package eve

import (
	"strings"
)

// NodeName maps an EVE device name onto a Kubernetes node name: an RFC 1123
// label (lower case alphanumerics and '-', at most 63 characters, so it is
// also a valid kubernetes.io/hostname label value). The mapping depends only
// on its inputs, so a device keeps its node name across restarts. An empty
// result falls back to "eve-<device uuid>".
func NodeName(deviceName, deviceUUID string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(deviceName) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
			dash = false
		default:
			// Runs of anything else (space, '_', '.', unicode) become one '-'.
			if !dash && b.Len() > 0 {
				b.WriteByte('-')
				dash = true
			}
		}
	}
	n := strings.Trim(b.String(), "-")
	if len(n) > 63 {
		n = strings.TrimRight(n[:63], "-")
	}
	if n == "" {
		n = strings.Trim("eve-"+strings.ToLower(deviceUUID), "-")
		if len(n) > 63 {
			n = n[:63]
		}
	}
	return n
}
