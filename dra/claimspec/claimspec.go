// Package claimspec is the CDI spec evelet's DRA driver writes for each
// prepared ResourceClaim, and the CRI shim reads: one spec file per claim,
// kind eve.lf-edge.org/claim, one CDI device per allocated EVE adapter,
// named <claim UID>_<device>. The spec also records which pods the claim
// was prepared for and which adapter each device is, so the shim gives a
// device only to those pods and only while the owner still assigns it.
//
// It imports only the CDI library, so the CRI shim does not link the DRA
// driver.
package claimspec

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/lf-edge/evelet/internal/atomicfile"
	"github.com/lf-edge/evelet/policy"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
	cdispec "tags.cncf.io/container-device-interface/specs-go"
)

// Annotation keys of a claim spec (spec level) and of its devices.
const (
	annClaim   = "eve.lf-edge.org/claim" // "<namespace>/<name>"
	annPods    = "eve.lf-edge.org/pods"  // "<uid>=<namespace>/<name>,..."
	annAdapter = "eve.lf-edge.org/adapter"
	annClass   = "eve.lf-edge.org/class"
	annPCI     = "eve.lf-edge.org/pci"
	annUSB     = "eve.lf-edge.org/usb"
	annDevice  = "eve.lf-edge.org/device"      // the ResourceSlice device name
	annLabel   = "eve.lf-edge.org/assigned-as" // the owner's evelet.policy.devices entry
)

// Claim is one prepared claim.
type Claim struct {
	UID, Namespace, Name string
	// Pods the claim was prepared for (its status.reservedFor).
	Pods    []Pod
	Devices []Device
}

// Pod is a pod a claim is reserved for.
type Pod struct{ UID, Namespace, Name string }

// Device is one allocated adapter of a claim.
type Device struct {
	// Device is the ResourceSlice device name; Adapter the EVE adapter's
	// label; Label the owner's evelet.policy.devices entry that gave it.
	Device, Adapter, Label, Class string
	PCI, USB                      string
	// Nodes are host device nodes, given to containers at the same path.
	Nodes []string
	// Env is KEY=VALUE for the containers.
	Env []string
}

var uidRE = regexp.MustCompile(`^[0-9a-zA-Z][0-9a-zA-Z-]{0,63}$`)

// DeviceID is the CDI device ID the kubelet passes to the runtime for
// device dev of claim uid.
func DeviceID(uid, dev string) string {
	return parser.QualifiedName(policy.ClaimCDIVendor, policy.ClaimCDIClass, uid+"_"+dev)
}

// ParseDeviceID splits a CDI device ID of evelet's claim kind into the
// claim UID and the device name; anything else, or a name that could lead
// out of the spec directory, is an error.
func ParseDeviceID(id string) (uid, dev string, err error) {
	vendor, class, name, err := parser.ParseQualifiedName(id)
	if err != nil {
		return "", "", err
	}
	if vendor != policy.ClaimCDIVendor || class != policy.ClaimCDIClass {
		return "", "", fmt.Errorf("not of kind %s", policy.ClaimCDIKind)
	}
	uid, dev, ok := strings.Cut(name, "_")
	if !ok || !uidRE.MatchString(uid) || dev == "" {
		return "", "", fmt.Errorf("not <claim UID>_<device>")
	}
	return uid, dev, nil
}

// File is the spec file of claim uid in dir.
func File(dir, uid string) (string, error) {
	if !uidRE.MatchString(uid) {
		return "", fmt.Errorf("claim UID %q is not a UID", uid)
	}
	return filepath.Join(dir, cdi.GenerateTransientSpecName(policy.ClaimCDIVendor, policy.ClaimCDIClass, uid)+".json"), nil
}

// Write writes claim c's spec (temp-then-rename), replacing an older one.
func Write(dir string, c Claim) error {
	f, err := File(dir, c.UID)
	if err != nil {
		return err
	}
	spec := cdispec.Spec{
		Kind: policy.ClaimCDIKind,
		Annotations: map[string]string{
			annClaim: c.Namespace + "/" + c.Name,
			annPods:  formatPods(c.Pods),
		},
	}
	for _, d := range c.Devices {
		cd := cdispec.Device{
			Name: c.UID + "_" + d.Device,
			Annotations: map[string]string{
				annDevice: d.Device, annAdapter: d.Adapter, annClass: d.Class, annLabel: d.Label,
			},
			ContainerEdits: cdispec.ContainerEdits{Env: d.Env},
		}
		if d.PCI != "" {
			cd.Annotations[annPCI] = d.PCI
		}
		if d.USB != "" {
			cd.Annotations[annUSB] = d.USB
		}
		for _, n := range d.Nodes {
			cd.ContainerEdits.DeviceNodes = append(cd.ContainerEdits.DeviceNodes,
				&cdispec.DeviceNode{Path: n, HostPath: n, Permissions: "rw"})
		}
		spec.Devices = append(spec.Devices, cd)
	}
	// The oldest CDI version that has what the spec uses, so older
	// readers accept it.
	if spec.Version, err = cdi.MinimumRequiredVersion(&spec); err != nil {
		return err
	}
	data, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(f, data, 0o600)
}

// ErrNotPrepared: no spec for the claim (never prepared, or unprepared).
var ErrNotPrepared = errors.New("no claim prepared with this UID")

// Read reads and validates claim uid's spec.
func Read(dir, uid string) (Claim, error) {
	f, err := File(dir, uid)
	if err != nil {
		return Claim{}, err
	}
	spec, err := cdi.ReadSpec(f, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return Claim{}, ErrNotPrepared
	}
	if err != nil {
		return Claim{}, err
	}
	if spec.Kind != policy.ClaimCDIKind {
		return Claim{}, fmt.Errorf("%s: kind %q", f, spec.Kind)
	}
	c := Claim{UID: uid}
	c.Namespace, c.Name, _ = strings.Cut(spec.Annotations[annClaim], "/")
	c.Pods = parsePods(spec.Annotations[annPods])
	for _, d := range spec.Devices {
		cu, _, ok := strings.Cut(d.Name, "_")
		if !ok || cu != uid {
			return Claim{}, fmt.Errorf("%s: device %q is not of claim %s", f, d.Name, uid)
		}
		dev := Device{Device: d.Annotations[annDevice], Adapter: d.Annotations[annAdapter], Label: d.Annotations[annLabel], Class: d.Annotations[annClass],
			PCI: d.Annotations[annPCI], USB: d.Annotations[annUSB], Env: d.ContainerEdits.Env}
		for _, n := range d.ContainerEdits.DeviceNodes {
			dev.Nodes = append(dev.Nodes, n.HostPath)
		}
		c.Devices = append(c.Devices, dev)
	}
	return c, nil
}

// Remove removes claim uid's spec; a missing one is not an error.
func Remove(dir, uid string) error {
	f, err := File(dir, uid)
	if err != nil {
		return err
	}
	if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// List reads every claim spec in dir (missing dir: none); unreadable
// files are skipped and reported in the error.
func List(dir string) ([]Claim, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	prefix := cdi.GenerateTransientSpecName(policy.ClaimCDIVendor, policy.ClaimCDIClass, "")
	var out []Claim
	var errs []error
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, prefix) || !strings.HasSuffix(n, ".json") {
			continue
		}
		c, err := Read(dir, strings.TrimSuffix(strings.TrimPrefix(n, prefix), ".json"))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, c)
	}
	return out, errors.Join(errs...)
}

// Device returns the claim's device named dev (the part of a CDI ID after
// the claim UID).
func (c Claim) Device(dev string) (Device, bool) {
	for _, d := range c.Devices {
		if d.Device == dev {
			return d, true
		}
	}
	return Device{}, false
}

// HasPod reports whether the claim was prepared for the pod with this UID.
func (c Claim) HasPod(uid string) bool {
	for _, p := range c.Pods {
		if p.UID == uid && uid != "" {
			return true
		}
	}
	return false
}

func formatPods(ps []Pod) string {
	var parts []string
	for _, p := range ps {
		parts = append(parts, p.UID+"="+p.Namespace+"/"+p.Name)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func parsePods(s string) []Pod {
	var out []Pod
	for _, e := range strings.Split(s, ",") {
		uid, nn, ok := strings.Cut(e, "=")
		if !ok {
			continue
		}
		ns, name, _ := strings.Cut(nn, "/")
		out = append(out, Pod{UID: uid, Namespace: ns, Name: name})
	}
	return out
}
