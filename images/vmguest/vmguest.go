// Package vmguest builds evelet's tiny bootable test VM guest, without
// Docker and without root-only block devices, in two containerDisk forms:
//
//   - DiskRef, a bootable disk (/disk/guest.qcow2): an MBR disk with one
//     FAT partition holding the kernel, the initramfs and SYSLINUX. QEMU's
//     default firmware (SeaBIOS) boots it like any PC disk.
//   - KernelRef, the direct kernel boot form: /disk/vmlinuz, /disk/initrd
//     and /disk/cmdline, for QEMU's -kernel/-initrd/-append.
//
// The kernel is Debian's cloud kernel (package linux-image-*-cloud-amd64,
// fetched with `apt-get download`, unpacked with `dpkg -x`, cached under
// cacheDir keyed by the package name, which carries the ABI version). The
// initramfs is the whole guest: a static busybox (host package
// busybox-static) for /bin/sh and friends, the kernel modules the guest
// needs with their dependencies (virtio-pci, virtio-net, virtio-console,
// virtio-blk, the ACPI button and evdev, virtio-rng), and guestinit (this
// package's guestinit command, compiled static with CGO_ENABLED=0) as
// /init. The guest keeps running from the initramfs; it has no root file
// system and writes nothing to its disk.
//
// What the guest does (see guestinit for details): loads its modules,
// takes an IPv4 address by DHCP on every NIC, serves HTTP on :80 (GET /
// answers "evelet-guest <hostname> <ip>[,<ip>...]"), prints ReadyLine on
// the serial console (ttyS0) once every NIC has an address (or after a
// bounded wait, naming the NIC that got none), answers the QEMU guest agent
// on the virtio-serial port org.qemu.guest_agent.0, and powers off on the
// ACPI power button (QMP system_powerdown) or guest-shutdown.
//
// Guest agent subset answered (QEMU's qemu-ga JSON protocol, one JSON
// object per command, optional "id" echoed): guest-sync and
// guest-sync-delimited (the reply to the latter is preceded by a 0xFF
// byte; 0xFF bytes the client sends to reset the parser are skipped),
// guest-ping, guest-info (version and the supported commands), guest-exec
// (path, arg, env, input-data in base64, capture-output as a bool or a
// mode string; returns {"pid"}), guest-exec-status (exited, exitcode or
// signal, out-data and err-data in base64, out-truncated/err-truncated past
// 16 MiB; a status reported as exited is forgotten, as qemu-ga does) and
// guest-shutdown (mode powerdown, halt or reboot; no reply, like
// qemu-ga). Any other command gets a CommandNotFound error.
//
// How the disk is made without loop mounts: the FAT file system is made in
// a plain file by mkfs.vfat (dosfstools), files are copied in with mcopy
// (mtools), SYSLINUX's boot sector and ldlinux.sys are written into that
// file by Debian's mtools-based `syslinux --install`, and the MBR (boot
// code from syslinux-common's mbr.bin plus a one-entry partition table,
// written by this package: 16 bytes do not justify fdisk) is put in front
// of it; `qemu-img convert -O qcow2` makes the qcow2. None of it needs
// root.
//
// Build output goes to outDir; cacheDir holds the kernel package. Outputs
// are rebuilt only when an input changed (content key beside each file),
// and every file is written temp-then-rename.
package vmguest

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/internal/atomicfile"
)

const (
	// DiskRef is the containerDisk image holding /disk/guest.qcow2.
	DiskRef = "evelet.local/vmguest-disk:1"
	// KernelRef is the direct kernel boot image holding /disk/vmlinuz,
	// /disk/initrd and /disk/cmdline.
	KernelRef = "evelet.local/vmguest-kernel:1"
	// ReadyLine is printed on the guest's serial console, alone on its
	// line, once its NICs have addresses and HTTP serves.
	ReadyLine = "evelet-guest: ready"

	// Cmdline is the kernel command line of both forms. quiet keeps the
	// (slow, under TCG) serial console for the guest's own lines; panic=-1
	// reboots at once on a panic, which QEMU with -no-reboot turns into
	// an exit.
	Cmdline = "console=ttyS0,115200 quiet panic=-1"

	// Paths inside the images.
	DiskPath    = "/disk/guest.qcow2"
	KernelPath  = "/disk/vmlinuz"
	InitrdPath  = "/disk/initrd"
	CmdlinePath = "/disk/cmdline"

	// formatVersion is part of the content key: bump it when the layout
	// of the outputs changes.
	formatVersion = "1"
)

// BusyboxPath is the static busybox put into the guest (Debian package
// busybox-static).
var BusyboxPath = "/bin/busybox"

// busyboxApplets get symlinks in the guest's /bin.
var busyboxApplets = []string{
	"sh", "ash", "cat", "echo", "ls", "ps", "ip", "ifconfig", "route", "sleep",
	"mount", "umount", "dmesg", "poweroff", "reboot", "halt", "hostname",
	"uname", "wget", "nc", "true", "false", "test", "[", "kill", "free",
	"df", "mkdir", "rm", "cp", "mv", "ln", "grep", "sed", "awk", "head",
	"tail", "wc", "env", "date", "printf", "id", "uptime", "lsmod", "ping",
	"sync", "touch", "stat", "find", "xargs", "od", "hexdump", "base64",
}

// Images are the build outputs.
type Images struct {
	// DiskTar and KernelTar are docker-archive tarballs of DiskRef and
	// KernelRef, for `ctr images import` (images.Import,
	// tests/containerd.(*Containerd).ImportImages).
	DiskTar   string
	KernelTar string
	// The same files as in the images, for booting them directly.
	Disk    string // qcow2
	Kernel  string // vmlinuz
	Initrd  string // gzip newc cpio
	Cmdline string // file holding the kernel command line

	// KernelPackage is the Debian package the kernel came from.
	KernelPackage string
	// KernelVersion is its module directory name (uname -r in the guest).
	KernelVersion string
}

// Output file names in outDir.
const (
	diskTarName   = "vmguest-disk.tar"
	kernelTarName = "vmguest-kernel.tar"
	diskName      = "guest.qcow2"
	kernelName    = "vmlinuz"
	initrdName    = "initrd"
	cmdlineName   = "cmdline"
	keyName       = "vmguest.key"
)

// Build builds both guest images into outDir, fetching the kernel into
// cacheDir when needed. It compiles guestinit with "go" from $PATH in the
// module that `go env GOMOD` finds from the current directory, like
// images.BuildPause. It needs apt-get/apt-cache and dpkg (first run only),
// mkfs.vfat, mcopy, syslinux, Debian's syslinux-common mbr.bin and
// qemu-img.
func Build(ctx context.Context, cacheDir, outDir string) (*Images, error) {
	if runtime.GOARCH != "amd64" {
		return nil, fmt.Errorf("vmguest: only amd64 guests are built (Debian cloud kernel, SYSLINUX BIOS boot); this is %s", runtime.GOARCH)
	}
	for _, d := range []string{cacheDir, outDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("vmguest: %w", err)
		}
	}
	kernel, err := fetchKernel(ctx, cacheDir)
	if err != nil {
		return nil, err
	}
	initBin, err := buildInit(ctx)
	if err != nil {
		return nil, err
	}
	busybox, err := readStatic(BusyboxPath)
	if err != nil {
		return nil, err
	}
	mods, err := resolveModules(kernel.moduleDir(), guestModules)
	if err != nil {
		return nil, err
	}
	initrd, err := buildInitramfs(initBin, busybox, kernel, mods)
	if err != nil {
		return nil, err
	}
	vmlinuz, err := os.ReadFile(kernel.vmlinuz())
	if err != nil {
		return nil, fmt.Errorf("vmguest: %w", err)
	}
	out := &Images{
		DiskTar:       filepath.Join(outDir, diskTarName),
		KernelTar:     filepath.Join(outDir, kernelTarName),
		Disk:          filepath.Join(outDir, diskName),
		Kernel:        filepath.Join(outDir, kernelName),
		Initrd:        filepath.Join(outDir, initrdName),
		Cmdline:       filepath.Join(outDir, cmdlineName),
		KernelPackage: kernel.pkg,
		KernelVersion: kernel.version,
	}
	key := contentKey(vmlinuz, initrd, []byte(Cmdline))
	if upToDate(out, filepath.Join(outDir, keyName), key) {
		return out, nil
	}
	// The old key goes first: until the new one is written, nothing here
	// counts as built.
	if err := os.Remove(filepath.Join(outDir, keyName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("vmguest: %w", err)
	}
	cmdline := []byte(Cmdline + "\n")
	for _, f := range []struct {
		path string
		data []byte
	}{{out.Kernel, vmlinuz}, {out.Initrd, initrd}, {out.Cmdline, cmdline}} {
		if err := atomicfile.WriteFile(f.path, f.data, 0o644); err != nil {
			return nil, fmt.Errorf("vmguest: %w", err)
		}
	}
	if err := writeKernelImage(out.KernelTar, vmlinuz, initrd, cmdline); err != nil {
		return nil, err
	}
	qcow2, err := buildDisk(ctx, vmlinuz, initrd)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(out.Disk, qcow2, 0o644); err != nil {
		return nil, fmt.Errorf("vmguest: %w", err)
	}
	if err := writeDiskImage(out.DiskTar, qcow2); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(filepath.Join(outDir, keyName), []byte(key+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("vmguest: %w", err)
	}
	return out, nil
}

func contentKey(inputs ...[]byte) string {
	h := sha256.New()
	fmt.Fprintf(h, "evelet-vmguest/%s\x00", formatVersion)
	for _, in := range inputs {
		sum := sha256.Sum256(in)
		h.Write(sum[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// upToDate reports whether every output exists and the recorded key
// matches.
func upToDate(out *Images, keyPath, key string) bool {
	got, err := os.ReadFile(keyPath)
	if err != nil || strings.TrimSpace(string(got)) != key {
		return false
	}
	for _, p := range []string{out.DiskTar, out.KernelTar, out.Disk, out.Kernel, out.Initrd, out.Cmdline} {
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() || st.Size() == 0 {
			return false
		}
	}
	return true
}

// buildInit compiles guestinit static for the guest.
func buildInit(ctx context.Context) ([]byte, error) {
	root, err := images.ModuleRoot(ctx, "go")
	if err != nil {
		return nil, fmt.Errorf("vmguest: %w", err)
	}
	tmp, err := os.MkdirTemp("", "evelet-vmguest-init-")
	if err != nil {
		return nil, fmt.Errorf("vmguest: %w", err)
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "init")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w", "-o", bin, "./images/vmguest/guestinit")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("vmguest: building guestinit in %s: %w: %s", root, err, strings.TrimSpace(string(out)))
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("vmguest: %w", err)
	}
	return b, nil
}

// readStatic reads an executable that must be statically linked (the
// guest has no libraries).
func readStatic(path string) ([]byte, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("vmguest: %s: %w (install busybox-static)", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("vmguest: %s is dynamically linked; the guest needs a static one (install busybox-static)", path)
		}
	}
	return os.ReadFile(path)
}

// buildInitramfs assembles the guest's whole file system.
func buildInitramfs(initBin, busybox []byte, k *kernelTree, mods []string) ([]byte, error) {
	dirs := map[string]bool{}
	var entries []cpioEntry
	addDir := func(p string) {
		for d := p; d != "/" && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
			entries = append(entries, cpioEntry{path: d, mode: sIFDIR | 0o755})
		}
	}
	for _, d := range []string{"/bin", "/sbin", "/dev", "/proc", "/sys", "/run", "/etc", "/root"} {
		addDir(d)
	}
	entries = append(entries, cpioEntry{path: "/tmp", mode: sIFDIR | 0o1777})
	entries = append(entries,
		cpioEntry{path: "/init", mode: sIFREG | 0o755, data: initBin},
		cpioEntry{path: "/bin/busybox", mode: sIFREG | 0o755, data: busybox},
		cpioEntry{path: "/dev/console", mode: sIFCHR | 0o600, rdevMj: 5, rdevMn: 1},
		cpioEntry{path: "/etc/passwd", mode: sIFREG | 0o644, data: []byte("root:x:0:0:root:/root:/bin/sh\n")},
		cpioEntry{path: "/etc/group", mode: sIFREG | 0o644, data: []byte("root:x:0:\n")},
	)
	for _, a := range busyboxApplets {
		entries = append(entries, cpioEntry{path: "/bin/" + a, mode: sIFLNK | 0o777, data: []byte("busybox")})
	}
	var order []string
	for _, rel := range mods {
		data, err := os.ReadFile(filepath.Join(k.moduleDir(), rel))
		if err != nil {
			return nil, fmt.Errorf("vmguest: %w", err)
		}
		p := filepath.Join("/lib/modules", k.version, rel)
		addDir(filepath.Dir(p))
		entries = append(entries, cpioEntry{path: p, mode: sIFREG | 0o644, data: data})
		order = append(order, p)
	}
	addDir("/lib/modules")
	entries = append(entries, cpioEntry{path: "/lib/modules/load-order", mode: sIFREG | 0o644, data: []byte(strings.Join(order, "\n") + "\n")})
	sort.Slice(entries, func(i, j int) bool { return entries[i].path < entries[j].path })
	return newcArchive(entries)
}
