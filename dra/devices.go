package dra

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Device classes, the "class" attribute a DeviceClass selects on
// (deploy/dra-deviceclasses.yaml).
const (
	ClassSerial = "serial"
	ClassUSB    = "usb"
	ClassNet    = "net"
	ClassGPU    = "gpu"
	ClassCAN    = "can"
	ClassPCI    = "pci" // any other PCI adapter (audio, storage, ...)
)

// Device is one EVE adapter the owner gave to Kubernetes, as the driver
// publishes and prepares it.
type Device struct {
	// Name is the device's name in the ResourceSlice: a DNS label made
	// from the adapter's label.
	Name string
	// Adapter is the adapter's logical label (its physical label when it
	// has none): what the owner named in evelet.policy.devices.
	Adapter, Phylabel string
	// Label is the owner's entry that named it.
	Label string
	Class string
	// Nodes are the host device nodes a container of the pod gets.
	Nodes []string
	// PCI is the adapter's PCI address (Domain:Bus:Device.Function), USB
	// its USB address ("<bus>:<port path>"), for VM passthrough.
	PCI, USB string
	// VendorID and ProductID are lower-case hex ("8086"), when known.
	VendorID, ProductID string
	Ifname              string
	// Unhealthy says why EVE reports the adapter broken; such a device is
	// not offered.
	Unhealthy string
}

// Selection is what the owner's list resolves to: the devices to publish,
// and why each other listed label is not one.
type Selection struct {
	Devices []Device
	// Refused maps a listed label to the reason it is not offered (not in
	// EVE's adapter list, used by an EVE app, one of EVE's network ports,
	// broken, ...).
	Refused map[string]string
}

// Select resolves the owner's adapter labels against EVE's adapter list.
// sysfs is the root of /sys (tests use a fake tree). Labels match EVE's
// way (pillar's LookupIoBundle*): case-insensitively, the logical label
// first, then the physical one.
func Select(aa AssignableAdapters, labels []string, sysfs string) Selection {
	sel := Selection{Refused: map[string]string{}}
	used := map[string]bool{}
	for _, label := range labels {
		b, ok := lookup(aa.IoBundleList, label)
		if !ok {
			sel.Refused[label] = "EVE lists no adapter with this label"
			continue
		}
		switch {
		case b.inUseByEVE():
			sel.Refused[label] = "EVE assigned it to one of its own applications (" + b.UsedByUUID + ")"
			continue
		case b.IsPort:
			sel.Refused[label] = "it is one of EVE's own network ports"
			continue
		}
		d, err := toDevice(b, sysfs)
		d.Label = label
		if err != nil {
			sel.Refused[label] = err.Error()
			continue
		}
		if used[d.Adapter] {
			continue // listed twice (by logical and physical label)
		}
		used[d.Adapter] = true
		if d.Unhealthy != "" {
			sel.Refused[label] = "EVE reports it broken: " + d.Unhealthy
			continue
		}
		sel.Devices = append(sel.Devices, d)
	}
	nameDevices(sel.Devices)
	return sel
}

func lookup(list []IoBundle, label string) (IoBundle, bool) {
	for _, b := range list {
		if b.Logicallabel != "" && strings.EqualFold(b.Logicallabel, label) {
			return b, true
		}
	}
	for _, b := range list {
		if strings.EqualFold(b.Phylabel, label) {
			return b, true
		}
	}
	return IoBundle{}, false
}

func toDevice(b IoBundle, sysfs string) (Device, error) {
	d := Device{Adapter: b.Logicallabel, Phylabel: b.Phylabel, PCI: b.PciLong, USB: b.UsbAddr, Ifname: b.Ifname,
		Unhealthy: b.hardError()}
	if d.Adapter == "" {
		d.Adapter = b.Phylabel
	}
	switch b.Type {
	case IoCom:
		d.Class = ClassSerial
	case IoUSB, IoUSBDevice:
		if b.Type == IoUSB && b.UsbAddr == "" && b.UsbProduct == "" {
			d.Class = ClassPCI // a whole USB controller (pillar's IsUSBController)
		} else {
			d.Class = ClassUSB
		}
	case IoUSBController:
		d.Class = ClassPCI
	case IoNetEth, IoNetWLAN, IoNetWWAN, IoNetEthPF, IoNetEthVF:
		d.Class = ClassNet
	case IoHDMI:
		d.Class = ClassGPU
	case IoCAN, IoVCAN, IoLCAN:
		d.Class = ClassCAN
	default:
		d.Class = ClassPCI
	}
	if b.Serial != "" {
		n, err := devicePath(b.Serial)
		if err != nil {
			return d, err
		}
		d.Nodes = append(d.Nodes, n)
	}
	if d.Class == ClassUSB && d.USB != "" {
		n, err := usbNode(sysfs, d.USB)
		if err != nil {
			d.Unhealthy = err.Error()
		} else {
			d.Nodes = append(d.Nodes, n)
		}
	}
	if v, p, ok := strings.Cut(b.UsbProduct, ":"); ok {
		d.VendorID, d.ProductID = hexID(v), hexID(p)
	}
	if d.PCI != "" && d.VendorID == "" {
		dir := filepath.Join(sysfs, "bus", "pci", "devices", d.PCI)
		d.VendorID, d.ProductID = readHexID(filepath.Join(dir, "vendor")), readHexID(filepath.Join(dir, "device"))
	}
	if d.Class == ClassSerial && len(d.Nodes) == 0 {
		return d, fmt.Errorf("EVE names no serial device node for it")
	}
	if len(d.Nodes) == 0 && d.PCI == "" && d.USB == "" {
		return d, fmt.Errorf("EVE gives neither a device node, a PCI nor a USB address for it")
	}
	return d, nil
}

// devicePath accepts an absolute, clean path without "..": EVE's config
// names it, and containers get it as their device node.
func devicePath(p string) (string, error) {
	if !strings.HasPrefix(p, "/") || path.Clean(p) != p || strings.Contains(p, "/../") {
		return "", fmt.Errorf("EVE's device node %q is not a clean absolute path", p)
	}
	return p, nil
}

// usbNode finds /dev/bus/usb/BBB/DDD of the USB device at "<bus>:<ports>"
// (EVE's UsbAddr), through sysfs (<bus>-<ports>/busnum and devnum).
func usbNode(sysfs, addr string) (string, error) {
	bus, ports, ok := strings.Cut(addr, ":")
	if !ok || bus == "" || ports == "" || strings.ContainsAny(addr, "/") {
		return "", fmt.Errorf("USB address %q is not <bus>:<port path>", addr)
	}
	dir := filepath.Join(sysfs, "bus", "usb", "devices", bus+"-"+ports)
	num := func(f string) (int, error) {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return 0, err
		}
		return strconv.Atoi(strings.TrimSpace(string(b)))
	}
	bn, err1 := num("busnum")
	dn, err2 := num("devnum")
	if err1 != nil || err2 != nil {
		return "", fmt.Errorf("USB device %s is not plugged in", addr)
	}
	return fmt.Sprintf("/dev/bus/usb/%03d/%03d", bn, dn), nil
}

func hexID(s string) string {
	s = strings.ToLower(strings.TrimPrefix(strings.TrimSpace(s), "0x"))
	if _, err := strconv.ParseUint(s, 16, 16); err != nil {
		return ""
	}
	return s
}

func readHexID(f string) string {
	b, err := os.ReadFile(f)
	if err != nil {
		return ""
	}
	return hexID(string(b))
}

// nameDevices gives each device a DNS label made from its adapter label,
// unique among them; a label that does not fit gets a hash suffix.
func nameDevices(ds []Device) {
	sort.Slice(ds, func(i, j int) bool { return ds[i].Adapter < ds[j].Adapter })
	taken := map[string]bool{}
	for i := range ds {
		n := dnsLabel(ds[i].Adapter)
		if taken[n] || n != strings.ToLower(ds[i].Adapter) {
			sum := sha256.Sum256([]byte(ds[i].Adapter))
			if len(n) > 54 {
				n = strings.TrimRight(n[:54], "-")
			}
			n = n + "-" + hex.EncodeToString(sum[:4])
		}
		taken[n] = true
		ds[i].Name = n
	}
}

func dnsLabel(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	n := strings.Trim(b.String(), "-")
	if len(n) > 63 {
		n = strings.TrimRight(n[:63], "-")
	}
	if n == "" {
		n = "adapter"
	}
	return n
}
