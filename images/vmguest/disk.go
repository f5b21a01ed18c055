package vmguest

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// mbrPaths are where distributions put SYSLINUX's MBR boot code (Debian:
// package syslinux-common).
var mbrPaths = []string{"/usr/lib/syslinux/mbr/mbr.bin", "/usr/share/syslinux/mbr.bin"}

const (
	sector        = 512
	partStart     = 2048 // first partition sector: 1 MiB, the usual alignment
	mbrCodeSize   = 440  // boot code before the disk signature
	diskSignature = 0x45564c54
)

// syslinuxCfg boots the kernel at once; SERIAL mirrors SYSLINUX's own
// messages (and errors) to the serial console.
var syslinuxCfg = "SERIAL 0 115200\nPROMPT 0\nTIMEOUT 0\nDEFAULT guest\nLABEL guest\n  LINUX /vmlinuz\n  INITRD /initrd\n  APPEND " + Cmdline + "\n"

// buildDisk makes the bootable qcow2 (see the package doc) and returns its
// bytes.
func buildDisk(ctx context.Context, vmlinuz, initrd []byte) ([]byte, error) {
	mbrCode, err := readMBR()
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "evelet-vmguest-disk-")
	if err != nil {
		return nil, fmt.Errorf("vmguest: %w", err)
	}
	defer os.RemoveAll(tmp)
	run := func(name string, args ...string) error {
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = tmp
		// mtools: no config file, no checks against a real drive.
		cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1", "MTOOLSRC=/dev/null", "SOURCE_DATE_EPOCH=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("vmguest: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	for name, data := range map[string][]byte{"vmlinuz": vmlinuz, "initrd": initrd, "syslinux.cfg": []byte(syslinuxCfg)} {
		if err := os.WriteFile(filepath.Join(tmp, name), data, 0o644); err != nil {
			return nil, fmt.Errorf("vmguest: %w", err)
		}
	}
	// The partition: room for the files, SYSLINUX and FAT overhead, in
	// whole MiB.
	const mib = 1 << 20
	partBytes := ((len(vmlinuz)+len(initrd))*11/10 + 4*mib + mib - 1) / mib * mib
	part := filepath.Join(tmp, "part.img")
	// -h: the hidden sectors before the partition, which SYSLINUX's boot
	// sector adds to find its files on the disk.
	if err := run("mkfs.vfat", "-C", "--invariant", "-n", "EVEGUEST", "-i", fmt.Sprintf("%08x", diskSignature),
		"-h", fmt.Sprint(partStart), part, fmt.Sprint(partBytes/1024)); err != nil {
		return nil, err
	}
	if err := run("mcopy", "-m", "-i", part, "vmlinuz", "initrd", "syslinux.cfg", "::/"); err != nil {
		return nil, err
	}
	if err := run("syslinux", "--install", part); err != nil {
		return nil, err
	}
	partData, err := os.ReadFile(part)
	if err != nil {
		return nil, fmt.Errorf("vmguest: %w", err)
	}
	if len(partData) != partBytes {
		return nil, fmt.Errorf("vmguest: mkfs.vfat made %d bytes, want %d", len(partData), partBytes)
	}
	// FAT32 has a zero 16-bit FAT size in the boot sector (offset 22).
	partType := byte(0x0E) // FAT16, LBA
	if binary.LittleEndian.Uint16(partData[22:]) == 0 {
		partType = 0x0C // FAT32, LBA
	}
	raw := make([]byte, partStart*sector, partStart*sector+len(partData))
	copy(raw, mbrCode)
	binary.LittleEndian.PutUint32(raw[mbrCodeSize:], diskSignature)
	writePartitionEntry(raw[446:462], partType, partStart, uint32(partBytes/sector))
	raw[510], raw[511] = 0x55, 0xAA
	raw = append(raw, partData...)
	rawPath := filepath.Join(tmp, "disk.raw")
	if err := os.WriteFile(rawPath, raw, 0o644); err != nil {
		return nil, fmt.Errorf("vmguest: %w", err)
	}
	if err := run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", rawPath, "guest.qcow2"); err != nil {
		return nil, err
	}
	return os.ReadFile(filepath.Join(tmp, "guest.qcow2"))
}

// writePartitionEntry fills one 16-byte MBR partition entry: active, LBA
// start and length; the CHS fields hold the "use LBA" marker (cylinder
// 1023, head 254, sector 63) that firmware and boot code ignore.
func writePartitionEntry(e []byte, typ byte, start, sectors uint32) {
	chsMax := []byte{0xFE, 0xFF, 0xFF}
	e[0] = 0x80 // bootable
	copy(e[1:4], chsMax)
	e[4] = typ
	copy(e[5:8], chsMax)
	binary.LittleEndian.PutUint32(e[8:], start)
	binary.LittleEndian.PutUint32(e[12:], sectors)
}

func readMBR() ([]byte, error) {
	for _, p := range mbrPaths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if len(b) > mbrCodeSize {
			return nil, fmt.Errorf("vmguest: %s is %d bytes, more than the %d of MBR boot code", p, len(b), mbrCodeSize)
		}
		return b, nil
	}
	return nil, fmt.Errorf("vmguest: no SYSLINUX mbr.bin in %s (install syslinux-common)", strings.Join(mbrPaths, ", "))
}
