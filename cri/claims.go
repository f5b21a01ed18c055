package cri

import (
	"errors"
	"strings"

	"github.com/lf-edge/evelet/dra/claimspec"
	"github.com/lf-edge/evelet/policy"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Devices of prepared ResourceClaims. The kubelet passes a claim's CDI
// device IDs in ContainerConfig.CDIDevices; containerd 1.6 cannot apply CDI,
// so the shim does it for evelet's own kind (eve.lf-edge.org/claim, written
// by the DRA driver, dra/claimspec): each device's nodes become
// ContainerConfig.Devices and its environment Envs, and the IDs are
// removed before forwarding. A device is applied only if its claim was
// prepared for this very pod and the owner still assigns its adapter;
// anything else is refused (rule no-devices, no knob), before any backend
// sees the request.

// PassthroughPCIAnnotation and PassthroughUSBAnnotation carry a VM pod's
// claimed PCI and USB addresses (comma lists) from the shim to the VM
// backend; the shim drops any such annotation the request already had, so
// only a prepared claim can set them.
const (
	PassthroughPCIAnnotation = "evelet.eve.lf-edge.org/passthrough-pci"
	PassthroughUSBAnnotation = "evelet.eve.lf-edge.org/passthrough-usb"
)

// applyClaims returns req's container config with the claimed devices
// applied (a copy; req is not changed), or a *policy.Violation.
func applyClaims(dir string, p policy.Policy, sb *runtimeapi.PodSandboxConfig, cfg *runtimeapi.ContainerConfig) (*runtimeapi.ContainerConfig, error) {
	if len(cfg.GetCDIDevices()) == 0 && cfg.GetAnnotations()[PassthroughPCIAnnotation] == "" && cfg.GetAnnotations()[PassthroughUSBAnnotation] == "" {
		return cfg, nil // nothing claimed (also a nil config: the backend refuses it)
	}
	out := proto.Clone(cfg).(*runtimeapi.ContainerConfig)
	delete(out.Annotations, PassthroughPCIAnnotation)
	delete(out.Annotations, PassthroughUSBAnnotation)
	var keep []*runtimeapi.CDIDevice
	var pci, usb []string
	name := cfg.GetMetadata().GetName()
	podUID := sb.GetMetadata().GetUid()
	for _, d := range cfg.GetCDIDevices() {
		id := d.GetName()
		if !policy.IsClaimCDIDevice(id) {
			keep = append(keep, d)
			continue
		}
		refuse := func(why string) error { return policy.ClaimViolation(sb, name, id, why) }
		uid, dev, err := claimspec.ParseDeviceID(id)
		if err != nil {
			return nil, refuse("which is not a device of a ResourceClaim evelet prepared (" + err.Error() + ")")
		}
		if dir == "" {
			return nil, refuse("but this device runs no DRA driver")
		}
		claim, err := claimspec.Read(dir, uid)
		if errors.Is(err, claimspec.ErrNotPrepared) {
			return nil, refuse("whose ResourceClaim is not prepared on this device")
		}
		if err != nil {
			return nil, refuse("whose prepared claim is unreadable: " + err.Error())
		}
		if !claim.HasPod(podUID) {
			return nil, refuse("whose ResourceClaim " + claim.Namespace + "/" + claim.Name + " was prepared for another pod")
		}
		cd, ok := claim.Device(dev)
		if !ok {
			return nil, refuse("which ResourceClaim " + claim.Namespace + "/" + claim.Name + " does not hold")
		}
		if !p.AssignsDevice(cd.Label) {
			return nil, refuse("whose EVE adapter " + cd.Adapter + " the device owner no longer gives to Kubernetes (config item " + policy.KeyDevices + ")")
		}
		for _, n := range cd.Nodes {
			if !hasDevice(out.Devices, n) {
				out.Devices = append(out.Devices, &runtimeapi.Device{ContainerPath: n, HostPath: n, Permissions: "rw"})
			}
		}
		for _, e := range cd.Env {
			k, v, _ := strings.Cut(e, "=")
			out.Envs = append(out.Envs, &runtimeapi.KeyValue{Key: k, Value: v})
		}
		if cd.PCI != "" {
			pci = append(pci, cd.PCI)
		}
		if cd.USB != "" {
			usb = append(usb, cd.USB)
		}
	}
	out.CDIDevices = keep
	if len(pci)+len(usb) > 0 && out.Annotations == nil {
		out.Annotations = map[string]string{}
	}
	if len(pci) > 0 {
		out.Annotations[PassthroughPCIAnnotation] = strings.Join(pci, ",")
	}
	if len(usb) > 0 {
		out.Annotations[PassthroughUSBAnnotation] = strings.Join(usb, ",")
	}
	return out, nil
}

func hasDevice(ds []*runtimeapi.Device, hostPath string) bool {
	for _, d := range ds {
		if d.GetHostPath() == hostPath {
			return true
		}
	}
	return false
}
