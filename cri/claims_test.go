package cri_test

import (
	"path/filepath"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri"
	"github.com/lf-edge/evelet/dra/claimspec"
	"github.com/lf-edge/evelet/policy"
)

const (
	claimA = "0b4d0c2e-7a35-4f0e-a1b2-aaaaaaaaaaaa"
	claimB = "0b4d0c2e-7a35-4f0e-a1b2-bbbbbbbbbbbb"
)

func claimContainer(sb *runtimeapi.PodSandboxConfig, ids ...string) *runtimeapi.CreateContainerRequest {
	req := hostRootContainer("sb-1")
	req.SandboxConfig = sb
	req.Config.Mounts = nil
	for _, id := range ids {
		req.Config.CDIDevices = append(req.Config.CDIDevices, &runtimeapi.CDIDevice{Name: id})
	}
	return req
}

// The devices of a prepared claim reach the backend as device nodes of this
// pod's container, and only for the pod the claim was prepared for, only
// while the owner still assigns the adapter; forged IDs and other pods'
// claims are refused by rule no-devices before any backend sees them.
func TestClaimDevicesOnlyForTheirPod(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cdi")
	for _, c := range []claimspec.Claim{
		{UID: claimA, Namespace: "default", Name: "serial-a", Pods: []claimspec.Pod{{UID: "u", Namespace: "default", Name: "x"}},
			Devices: []claimspec.Device{{Device: "com1", Adapter: "COM1", Label: "COM1", Class: "serial", Nodes: []string{"/dev/ttyS0"}, Env: []string{"EVE_DEVICE_COM1_ADAPTER=COM1"}}}},
		{UID: claimB, Namespace: "default", Name: "serial-b", Pods: []claimspec.Pod{{UID: "other", Namespace: "default", Name: "y"}},
			Devices: []claimspec.Device{{Device: "com2", Adapter: "COM2", Label: "COM2", Class: "serial", Nodes: []string{"/dev/ttyS1"}, Env: []string{"E=1"}}}},
	} {
		if err := claimspec.Write(dir, c); err != nil {
			t.Fatal(err)
		}
	}
	p := policy.Default()
	p.AssignedDevices = []string{"com1", "COM2"}
	e := newEnvWith(t, func(c *cri.Config) { c.ClaimsDir = dir; c.Policy = &p })

	ok := claimContainer(plainPod(), claimspec.DeviceID(claimA, "com1"))
	ok.Config.Annotations = map[string]string{cri.PassthroughPCIAnnotation: "0000:00:1f.0"} // forged
	if _, err := e.rt.CreateContainer(ctx(t), ok); err != nil {
		t.Fatalf("claimed device refused: %v", err)
	}
	got := e.fake.last("CreateContainer").(*runtimeapi.CreateContainerRequest).GetConfig()
	if len(got.GetCDIDevices()) != 0 || len(got.GetDevices()) != 1 || got.Devices[0].HostPath != "/dev/ttyS0" ||
		got.Devices[0].ContainerPath != "/dev/ttyS0" || got.Devices[0].Permissions != "rw" {
		t.Fatalf("forwarded devices %v, CDI %v", got.GetDevices(), got.GetCDIDevices())
	}
	if len(got.GetEnvs()) != 1 || got.Envs[0].Key != "EVE_DEVICE_COM1_ADAPTER" || got.Envs[0].Value != "COM1" {
		t.Fatalf("forwarded env %v", got.GetEnvs())
	}
	if _, forged := got.GetAnnotations()[cri.PassthroughPCIAnnotation]; forged {
		t.Fatal("a passthrough annotation the request carried was forwarded")
	}

	e.fake.reset()
	for name, tc := range map[string]struct {
		id, want string
	}{
		"another pod's claim":    {claimspec.DeviceID(claimB, "com2"), "prepared for another pod"},
		"forged path":            {"eve.lf-edge.org/claim=../../../etc/shadow_x", "not a device of a ResourceClaim"},
		"unprepared claim":       {claimspec.DeviceID("0b4d0c2e-7a35-4f0e-a1b2-cccccccccccc", "com1"), "not prepared"},
		"device not in claim":    {claimspec.DeviceID(claimA, "com2"), "does not hold"},
		"not a qualified CDI ID": {"eve.lf-edge.org/claim=", "not a device of a ResourceClaim"},
	} {
		_, err := e.rt.CreateContainer(ctx(t), claimContainer(plainPod(), tc.id))
		wantDenied(t, err, policy.RuleDevices)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "no config item can allow this") {
			t.Errorf("%s: %v", name, err)
		}
	}
	// The owner withdraws the adapter: the claim's device is refused too.
	p.AssignedDevices = []string{"COM2"}
	e.srv.SetPolicy(p)
	_, err := e.rt.CreateContainer(ctx(t), claimContainer(plainPod(), claimspec.DeviceID(claimA, "com1")))
	wantDenied(t, err, policy.RuleDevices)
	if err == nil || !strings.Contains(err.Error(), "no longer gives to Kubernetes") {
		t.Errorf("withdrawn: %v", err)
	}
	// A host device next to a claim is still refused.
	req := claimContainer(plainPod())
	req.Config.Devices = []*runtimeapi.Device{{HostPath: "/dev/ttyS0", ContainerPath: "/dev/ttyS0", Permissions: "rw"}}
	_, err = e.rt.CreateContainer(ctx(t), req)
	wantDenied(t, err, policy.RuleDevices)
	if n := e.fake.count("CreateContainer"); n != 0 {
		t.Errorf("%d refused requests reached the backend", n)
	}
}

// Without a DRA driver (no claims directory) no claim device is applied.
func TestClaimDevicesWithoutDriver(t *testing.T) {
	e := newEnv(t)
	_, err := e.rt.CreateContainer(ctx(t), claimContainer(plainPod(), claimspec.DeviceID(claimA, "com1")))
	wantDenied(t, err, policy.RuleDevices)
}
