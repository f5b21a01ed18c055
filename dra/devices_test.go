package dra

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testAdapters() AssignableAdapters {
	return AssignableAdapters{Initialized: true, IoBundleList: []IoBundle{
		{Type: IoCom, Phylabel: "COM1", Logicallabel: "COM1", Serial: "/dev/ttyS0"},
		{Type: IoCom, Phylabel: "COM2", Logicallabel: "shop_floor", Serial: "/dev/ttyS1"},
		{Type: IoUSBDevice, Phylabel: "USB-A", Logicallabel: "modem", UsbAddr: "1:2.3", UsbProduct: "2C7C:0125"},
		{Type: IoNetEth, Phylabel: "eth0", Logicallabel: "eth0", Ifname: "eth0", IsPort: true, PciLong: "0000:02:00.0"},
		{Type: IoNetEth, Phylabel: "eth1", Logicallabel: "eth1", Ifname: "eth1", PciLong: "0000:03:00.0"},
		{Type: IoHDMI, Phylabel: "VGA", Logicallabel: "gpu0", PciLong: "0000:00:02.0", UsedByUUID: "6f1d8a0c-3e52-4b6f-9c1e-2b7c1c9d0a11"},
		{Type: IoHDMI, Phylabel: "HDMI", Logicallabel: "gpu1", PciLong: "0000:00:03.0", UsedByUUID: "00000000-0000-0000-0000-000000000000"},
		{Type: IoCom, Phylabel: "COM3", Logicallabel: "COM3", Serial: "/dev/ttyS2",
			Error: IOBundleError{Errors: []struct {
				ErrStr  string `json:",omitempty"`
				Warning bool   `json:",omitempty"`
			}{{ErrStr: "no such device"}}}},
		{Type: IoCom, Phylabel: "COM4", Logicallabel: "COM4", Serial: "/dev/../mem"},
	}}
}

func fakeSysfs(t *testing.T) string {
	root := t.TempDir()
	usb := filepath.Join(root, "bus", "usb", "devices", "1-2.3")
	pci := filepath.Join(root, "bus", "pci", "devices", "0000:03:00.0")
	for _, d := range []string{usb, pci} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for f, v := range map[string]string{
		filepath.Join(usb, "busnum"): "1\n", filepath.Join(usb, "devnum"): "7\n",
		filepath.Join(pci, "vendor"): "0x8086\n", filepath.Join(pci, "device"): "0x1533\n",
	} {
		if err := os.WriteFile(f, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestSelectOffersOnlyWhatTheOwnerAssigned(t *testing.T) {
	sel := Select(testAdapters(), []string{"com1", "shop_floor", "modem", "eth0", "eth1", "gpu0", "gpu1", "COM3", "COM4", "nosuch", "COM2"}, fakeSysfs(t))
	got := map[string]Device{}
	for _, d := range sel.Devices {
		got[d.Adapter] = d
	}
	if len(got) != 5 {
		t.Fatalf("offered %+v, refused %v", sel.Devices, sel.Refused)
	}
	if d := got["COM1"]; d.Name != "com1" || d.Class != ClassSerial || strings.Join(d.Nodes, ",") != "/dev/ttyS0" {
		t.Errorf("COM1: %+v", d)
	}
	// "COM2" names the same adapter as "shop_floor" by its physical label.
	if d := got["shop_floor"]; !strings.HasPrefix(d.Name, "shop-floor-") || len(d.Name) > 63 || d.Class != ClassSerial {
		t.Errorf("shop_floor: %+v", d)
	}
	if d := got["modem"]; d.Class != ClassUSB || strings.Join(d.Nodes, ",") != "/dev/bus/usb/001/007" || d.VendorID != "2c7c" || d.ProductID != "0125" {
		t.Errorf("modem: %+v", d)
	}
	if d := got["eth1"]; d.Class != ClassNet || d.PCI != "0000:03:00.0" || d.VendorID != "8086" || d.ProductID != "1533" || len(d.Nodes) != 0 {
		t.Errorf("eth1: %+v", d)
	}
	if d := got["gpu1"]; d.Class != ClassGPU {
		t.Errorf("gpu1 (nil UUID: unused): %+v", d)
	}
	for label, why := range map[string]string{
		"eth0": "network ports", "gpu0": "own applications", "COM3": "broken", "COM4": "clean absolute", "nosuch": "no adapter",
	} {
		if !strings.Contains(sel.Refused[label], why) {
			t.Errorf("%s refused as %q, want %q", label, sel.Refused[label], why)
		}
	}
}

func TestSelectUnpluggedUSBIsNotOffered(t *testing.T) {
	sel := Select(testAdapters(), []string{"modem"}, t.TempDir())
	if len(sel.Devices) != 0 || !strings.Contains(sel.Refused["modem"], "not plugged in") {
		t.Fatalf("%+v %v", sel.Devices, sel.Refused)
	}
}

func TestDeviceNamesAreUniqueDNSLabels(t *testing.T) {
	ds := []Device{{Adapter: "COM1"}, {Adapter: "com1"}, {Adapter: strings.Repeat("x_", 60)}, {Adapter: "..."}}
	nameDevices(ds)
	seen := map[string]bool{}
	for _, d := range ds {
		if seen[d.Name] || len(d.Name) > 63 || d.Name != dnsLabel(d.Name) {
			t.Errorf("name %q of %q", d.Name, d.Adapter)
		}
		seen[d.Name] = true
	}
}
