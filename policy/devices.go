package policy

import (
	"fmt"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// KeyDevices lists the EVE I/O adapters the device owner gives to
// Kubernetes: each entry is an adapter's logical label (or physical label)
// as EVE's AssignableAdapters list names it. evelet's DRA driver (dra/)
// publishes exactly these as devices pods can claim; nothing else is ever
// visible to pods. Removing an entry takes the device back: pods using it
// are evicted first (docs/devices.md).
const KeyDevices = KeyPrefix + "devices"

// Names of evelet's own CDI devices: the DRA driver prepares a claim by
// writing a CDI spec of this kind, one device per allocated EVE adapter,
// named <claim UID>_<device>. The CRI shim applies these itself (containerd
// 1.6 cannot) and only for the pod the claim was prepared for
// (cri/claims.go); they are never judged against AllowedDevices.
const (
	ClaimCDIVendor = "eve.lf-edge.org"
	ClaimCDIClass  = "claim"
	ClaimCDIKind   = ClaimCDIVendor + "/" + ClaimCDIClass
)

// IsClaimCDIDevice reports whether a CDI device name is of evelet's claim
// kind ("eve.lf-edge.org/claim=..."), whatever follows.
func IsClaimCDIDevice(name string) bool {
	return strings.HasPrefix(name, ClaimCDIKind+"=")
}

// parseAdapterLabel accepts an EVE adapter label: printable, no blanks
// inside, no path separators (labels end up in device names and logs).
func parseAdapterLabel(e string) (string, error) {
	if len(e) > 128 {
		return "", fmt.Errorf("longer than 128 characters")
	}
	for _, r := range e {
		if r <= ' ' || r == '/' || r == '"' || r == '\\' || r == 0x7f {
			return "", fmt.Errorf("an adapter label has no blanks, quotes, slashes or control characters")
		}
	}
	return e, nil
}

// ClaimViolation is the refusal of a CDI device of evelet's claim kind that
// was not prepared for the pod asking for it (a forged name, another pod's
// claim, a claim already unprepared). No config item can allow it.
func ClaimViolation(sb *runtimeapi.PodSandboxConfig, container, device, why string) *Violation {
	subj := fmt.Sprintf("container %q of %s", container, podSubject(sb))
	return &Violation{RuleDevices, subj, fmt.Sprintf("asks for CDI device %q, %s", printable(device), why), "", ""}
}

// AssignsDevice reports whether the owner's evelet.policy.devices still
// names the adapter label (case-insensitively, as EVE matches labels).
func (p Policy) AssignsDevice(label string) bool {
	for _, a := range p.AssignedDevices {
		if strings.EqualFold(a, label) {
			return true
		}
	}
	return false
}
