package policy

import (
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestDevicesConfigItem(t *testing.T) {
	p, errs := FromConfigItems(map[string]string{KeyDevices: " COM1, usb-modem ,"})
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	if strings.Join(p.AssignedDevices, "|") != "COM1|usb-modem" {
		t.Fatalf("AssignedDevices = %q", p.AssignedDevices)
	}
	// One bad entry keeps the whole list at its default: nothing assigned.
	p, errs = FromConfigItems(map[string]string{KeyDevices: "COM1,../dev/mem"})
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), KeyDevices) || len(p.AssignedDevices) != 0 {
		t.Fatalf("errs %v, assigned %q", errs, p.AssignedDevices)
	}
}

// A CDI device of evelet's claim kind is left to the shim, which applies it
// only for the pod its claim was prepared for; any other CDI name still
// needs the owner's allowed-devices, and a claim name never widens what
// host device paths a container may name.
func TestClaimCDIDevicesAreLeftToTheShim(t *testing.T) {
	sb := pod("default", "p", "u", nil)
	c := ctr("c", kubeletSC())
	c.CDIDevices = []*runtimeapi.CDIDevice{{Name: ClaimCDIKind + "=0b4d0c2e-7a35-4f0e-a1b2-111111111111_com1"}}
	if err := Default().CheckContainer(sb, c); err != nil {
		t.Fatalf("claim CDI device refused by the policy itself: %v", err)
	}
	c.CDIDevices = append(c.CDIDevices, &runtimeapi.CDIDevice{Name: "eve.lf-edge.org/other=x"})
	if err := Default().CheckContainer(sb, c); err == nil || !strings.Contains(err.Error(), RuleDevices) {
		t.Fatalf("another kind of CDI device: %v", err)
	}
	c.CDIDevices = c.CDIDevices[:1]
	c.Devices = []*runtimeapi.Device{{HostPath: "/dev/ttyS1", ContainerPath: "/dev/ttyS1", Permissions: "rw"}}
	if err := Default().CheckContainer(sb, c); err == nil || !strings.Contains(err.Error(), RuleDevices) {
		t.Fatalf("a host device next to a claim: %v", err)
	}
	v := ClaimViolation(sb, "c", "eve.lf-edge.org/claim=x", "which is no claim prepared for this pod")
	if !strings.Contains(v.Error(), `"no-devices": container "c" of pod default/p asks for CDI device`) || !strings.Contains(v.Error(), "no config item can allow this") {
		t.Fatal(v)
	}
}
