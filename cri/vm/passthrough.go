package vm

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/lf-edge/evelet/cri"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Passthrough is what a VM pod's claims give its guest (docs/devices.md):
// PCI adapters as VFIO devices, USB devices through QEMU's usb-host. The
// CRI shim puts the claimed addresses in annotations only it can set
// (cri/claims.go); the backend checks them here and QEMU gets them at
// start.
type Passthrough struct {
	// PCI are PCI addresses (Domain:Bus:Device.Function).
	PCI []string `json:"pci,omitempty"`
	// USB are USB addresses "<bus>:<port path>" as EVE lists them.
	USB []string `json:"usb,omitempty"`
}

var (
	pciAddrRE = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`)
	usbAddrRE = regexp.MustCompile(`^([0-9]{1,3}):([0-9]{1,3}(\.[0-9]{1,3}){0,6})$`)
)

// passthroughOf reads and checks a container's claimed devices. A PCI
// adapter must be alone in its IOMMU group: VFIO hands the guest the whole
// group, so a shared one would give it DMA to its neighbours too. sysfs is
// the root of /sys.
func passthroughOf(cfg *runtimeapi.ContainerConfig, sysfs string) (Passthrough, error) {
	var p Passthrough
	split := func(v string) []string {
		var out []string
		for _, e := range strings.Split(v, ",") {
			if e = strings.TrimSpace(e); e != "" {
				out = append(out, e)
			}
		}
		return out
	}
	for _, a := range split(cfg.GetAnnotations()[cri.PassthroughPCIAnnotation]) {
		a = strings.ToLower(a)
		if !pciAddrRE.MatchString(a) {
			return p, fmt.Errorf("claimed PCI adapter %q: not a PCI address (dddd:bb:dd.f)", a)
		}
		if err := aloneInIOMMUGroup(sysfs, a); err != nil {
			return p, err
		}
		p.PCI = append(p.PCI, a)
	}
	for _, a := range split(cfg.GetAnnotations()[cri.PassthroughUSBAnnotation]) {
		if !usbAddrRE.MatchString(a) {
			return p, fmt.Errorf("claimed USB device %q: not a USB address (<bus>:<port path>)", a)
		}
		p.USB = append(p.USB, a)
	}
	return p, nil
}

// aloneInIOMMUGroup checks /sys/bus/pci/devices/<addr>/iommu_group/devices.
func aloneInIOMMUGroup(sysfs, addr string) error {
	dir := filepath.Join(sysfs, "bus", "pci", "devices", addr, "iommu_group", "devices")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("claimed PCI adapter %s cannot be passed through: it is in no IOMMU group (no IOMMU, or it is disabled): %v", addr, err)
	}
	var others []string
	for _, e := range ents {
		if e.Name() != addr {
			others = append(others, e.Name())
		}
	}
	if len(others) > 0 {
		sort.Strings(others)
		return fmt.Errorf("claimed PCI adapter %s cannot be passed through: its IOMMU group also holds %s, which the guest would reach too; the device owner must assign the whole group's adapters to Kubernetes and pass them together, or move the adapter",
			addr, strings.Join(others, ", "))
	}
	return nil
}

// qemuArgs passes the devices to QEMU: vfio-pci by host address, usb-host
// by bus and port on an xHCI controller of the guest's own.
func (p Passthrough) qemuArgs() []string {
	var a []string
	for i, addr := range p.PCI {
		a = append(a, "-device", fmt.Sprintf("vfio-pci,host=%s,id=hostpci%d", addr, i))
	}
	if len(p.USB) > 0 {
		a = append(a, "-device", "qemu-xhci,id=hostusb")
		for i, addr := range p.USB {
			m := usbAddrRE.FindStringSubmatch(addr)
			a = append(a, "-device", fmt.Sprintf("usb-host,bus=hostusb.0,hostbus=%s,hostport=%s,id=hostusb%d", m[1], m[2], i))
		}
	}
	return a
}

func (c Config) sysfs() string {
	if c.Sysfs == "" {
		return "/sys"
	}
	return c.Sysfs
}
