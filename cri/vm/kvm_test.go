package vm

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// requireKVMEnv makes a missing KVM a failure instead of a skip: `make
// test-kvm` sets it, so on a machine meant to have KVM the test cannot
// quietly skip.
const requireKVMEnv = "EVELET_REQUIRE_KVM"

// needKVM skips (or, under EVELET_REQUIRE_KVM=1, fails) unless this host can
// run KVM guests, by the backend's own test (KVMUsable: VMX/SVM, /dev/kvm
// opens, KVM_CREATE_VM works).
func needKVM(t *testing.T) {
	if KVMUsable(DefaultKVMDevice) {
		return
	}
	if os.Getenv(requireKVMEnv) == "1" {
		t.Fatalf("%s=1 but this host cannot run KVM guests (%s, VMX/SVM)", requireKVMEnv, DefaultKVMDevice)
	}
	t.Skipf("needs /dev/kvm and VMX/SVM (%s is not usable here); `make test-kvm` runs this on a host that has them", DefaultKVMDevice)
}

// TestVMLifecycleKVM boots a guest with KVM as a device with /dev/kvm would,
// and asks QEMU itself (QMP query-kvm) whether KVM is in use: the KVM path,
// which the TCG-only CI machines never take.
func TestVMLifecycleKVM(t *testing.T) {
	needKVM(t)
	h := newHarness(t)
	ctx := context.Background()
	img := diskImage(t, t.TempDir(), "evelet.local/h4-kvm:1", map[string][]byte{"disk/boot.raw": bootSector("evelet-test: kvm", false)})
	if err := h.ctrd.ImportImages(ctx, img); err != nil {
		t.Fatal(err)
	}
	h.emulate = false // software emulation not allowed: only KVM may run it
	b := h.backend()
	sb := h.sandbox(b, "kvm")
	cr, err := b.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb, Config: containerConfig("vm", "evelet.local/h4-kvm:1", 0)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpVMLogs(t, h.stateDir)
		}
		b.RemoveContainer(context.Background(), &runtimeapi.RemoveContainerRequest{ContainerId: cr.ContainerId})
	})
	if _, err := b.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
		t.Fatal(err)
	}
	waitLog(t, filepath.Join(h.logDir, "kvm", "vm", "0.log"), "evelet-test: kvm", 2*time.Minute)
	m, err := qmp.NewSocketMonitor("unix", filepath.Join(b.store.containerDir(cr.ContainerId), qmpSocket), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Connect(); err != nil {
		t.Fatal(err)
	}
	defer m.Disconnect()
	raw, err := m.Run([]byte(`{"execute":"query-kvm"}`))
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Return struct{ Enabled, Present bool }
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("query-kvm answer %s: %v", raw, err)
	}
	if !r.Return.Enabled || !r.Return.Present {
		t.Fatalf("QEMU says KVM present=%v enabled=%v; the guest must run under KVM where /dev/kvm exists", r.Return.Present, r.Return.Enabled)
	}
}
