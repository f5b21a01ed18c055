package vm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lf-edge/evelet/cri"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fakeIOMMU makes <sysfs>/bus/pci/devices/<addr>/iommu_group/devices/<member>
// for each group given as its members.
func fakeIOMMU(t *testing.T, groups ...[]string) string {
	root := t.TempDir()
	for i, members := range groups {
		g := filepath.Join(root, "kernel", "iommu_groups", string(rune('0'+i)), "devices")
		if err := os.MkdirAll(g, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, m := range members {
			dev := filepath.Join(root, "bus", "pci", "devices", m)
			if err := os.MkdirAll(dev, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(dev, filepath.Join(g, m)); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Dir(g), filepath.Join(dev, "iommu_group")); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

func claimed(pci, usb string) *runtimeapi.ContainerConfig {
	return &runtimeapi.ContainerConfig{Annotations: map[string]string{
		cri.PassthroughPCIAnnotation: pci, cri.PassthroughUSBAnnotation: usb}}
}

func TestPassthroughQEMUArgs(t *testing.T) {
	sysfs := fakeIOMMU(t, []string{"0000:03:00.0"}, []string{"0000:04:00.0", "0000:04:00.1"})
	p, err := passthroughOf(claimed("0000:03:00.0", "1:2.3, 3:1"), sysfs)
	if err != nil {
		t.Fatal(err)
	}
	c := &containerState{Metadata: &runtimeapi.ContainerMetadata{Name: "vm"}, VCPUs: 1, MemoryMiB: 128, Accel: "tcg", Passthrough: p}
	args := strings.Join(qemuArgs(c, "/d", nil), " ")
	for _, want := range []string{
		"-device vfio-pci,host=0000:03:00.0,id=hostpci0",
		"-device qemu-xhci,id=hostusb",
		"-device usb-host,bus=hostusb.0,hostbus=1,hostport=2.3,id=hostusb0",
		"-device usb-host,bus=hostusb.0,hostbus=3,hostport=1,id=hostusb1",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("QEMU args lack %q:\n%s", want, args)
		}
	}
	// Nothing claimed: no passthrough device at all.
	none, err := passthroughOf(&runtimeapi.ContainerConfig{}, sysfs)
	if err != nil || len(none.qemuArgs()) != 0 {
		t.Fatalf("no claim: %+v %v", none, err)
	}
	c.Passthrough = none
	if args := strings.Join(qemuArgs(c, "/d", nil), " "); strings.Contains(args, "vfio") || strings.Contains(args, "usb-host") {
		t.Fatalf("passthrough without a claim: %s", args)
	}
}

func TestPassthroughRefusesSharedIOMMUGroup(t *testing.T) {
	sysfs := fakeIOMMU(t, []string{"0000:03:00.0"}, []string{"0000:04:00.0", "0000:04:00.1"})
	for addr, want := range map[string]string{
		"0000:04:00.0":      "its IOMMU group also holds 0000:04:00.1",
		"0000:05:00.0":      "in no IOMMU group",
		"0000:03:00.0,x":    "not a PCI address",
		"../../../etc:00.0": "not a PCI address",
	} {
		_, err := passthroughOf(claimed(addr, ""), sysfs)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", addr, err, want)
		}
	}
	if _, err := passthroughOf(claimed("", "1:2/../3"), sysfs); err == nil {
		t.Error("a USB address with a path was accepted")
	}
}

// TestCreateContainerPassthrough: the backend keeps a VM pod's claimed
// devices in its state (so QEMU gets them at start, and after a restart),
// and refuses a PCI adapter sharing its IOMMU group before making anything.
func TestCreateContainerPassthrough(t *testing.T) {
	b := diskDirBackend(t)
	b.cfg.Sysfs = fakeIOMMU(t, []string{"0000:03:00.0"}, []string{"0000:04:00.0", "0000:04:00.1"})
	ctx := context.Background()
	sb, err := b.RunPodSandbox(ctx, sandboxReq("p"))
	if err != nil {
		t.Fatal(err)
	}
	bad := containerConfig("vm", "disk:1", 0)
	bad.Annotations = map[string]string{cri.PassthroughPCIAnnotation: "0000:04:00.1"}
	_, err = b.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: bad})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "also holds 0000:04:00.0") {
		t.Fatalf("shared IOMMU group: %v", err)
	}
	good := containerConfig("vm", "disk:1", 0)
	good.Annotations = map[string]string{cri.PassthroughPCIAnnotation: "0000:03:00.0", cri.PassthroughUSBAnnotation: "1:2.3"}
	c, err := b.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: good})
	if err != nil {
		t.Fatal(err)
	}
	st, err := b.store.container(c.ContainerId)
	if err != nil || strings.Join(st.Passthrough.PCI, ",") != "0000:03:00.0" || strings.Join(st.Passthrough.USB, ",") != "1:2.3" {
		t.Fatalf("saved passthrough %+v (%v)", st.Passthrough, err)
	}
}
