// Package nodelabels names the labels evelet puts on its Node and maps EVE
// strings onto label values. It is a leaf so that the upgrade coordinator
// and the tests can use the keys without linking the kubelet.
package nodelabels

import "strings"

// Label keys evelet puts on its Node. They are outside kubernetes.io so
// the NodeRestriction admission plugin lets the kubelet set them itself.
const (
	DeviceUUID = "node.eve.lf-edge.org/device-uuid"
	OSVersion  = "node.eve.lf-edge.org/os-version"
	VMRuntime  = "node.eve.lf-edge.org/vm-runtime"
	KVM        = "node.eve.lf-edge.org/kvm"
)

// SanitizeValue maps an EVE version string such as "14.5.1-lts-kvm-amd64"
// onto the label value alphabet.
func SanitizeValue(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			b[i] = '_'
		}
	}
	v := strings.Trim(string(b), "-_.")
	if len(v) > 63 {
		v = strings.TrimRight(v[:63], "-_.")
	}
	return v
}
