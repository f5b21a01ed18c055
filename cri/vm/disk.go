package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The containerDisk convention (docs/vm-pods.md): files under /disk/ of the
// image.
const (
	kernelName  = "vmlinuz"
	initrdName  = "initrd"
	cmdlineName = "cmdline"
)

// diskConvention is the message for an image that does not follow it.
const diskConvention = "a VM pod's image must hold its disk under /disk/: one qcow2 or raw file (e.g. /disk/disk.qcow2), or /disk/vmlinuz + /disk/initrd (+ optional /disk/cmdline) for direct kernel boot"

// bootFromDir works out how to boot from an extracted /disk/ directory and
// checks the disk with qemu-img, so a corrupt image fails at create with a
// message rather than as a guest that never boots.
func bootFromDir(ctx context.Context, qemuImg, dir, image string) (bootSpec, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return bootSpec{}, err
	}
	var files []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			files = append(files, e.Name())
		}
	}
	has := func(n string) bool {
		for _, f := range files {
			if f == n {
				return true
			}
		}
		return false
	}
	if has(kernelName) {
		if !has(initrdName) {
			return bootSpec{}, fmt.Errorf("image %s has /disk/vmlinuz but no /disk/initrd: %s", image, diskConvention)
		}
		bs := bootSpec{Kernel: filepath.Join(dir, kernelName), Initrd: filepath.Join(dir, initrdName)}
		if has(cmdlineName) {
			b, err := os.ReadFile(filepath.Join(dir, cmdlineName))
			if err != nil {
				return bootSpec{}, err
			}
			bs.Cmdline = strings.TrimSpace(string(b))
		}
		return bs, nil
	}
	var disks []string
	for _, f := range files {
		if f != cmdlineName && f != initrdName {
			disks = append(disks, f)
		}
	}
	switch len(disks) {
	case 0:
		return bootSpec{}, fmt.Errorf("image %s has no VM disk: %s", image, diskConvention)
	case 1:
	default:
		return bootSpec{}, fmt.Errorf("image %s has %d files under /disk/ (%s), want one: %s", image, len(disks), strings.Join(disks, ", "), diskConvention)
	}
	p := filepath.Join(dir, disks[0])
	format, err := diskFormat(ctx, qemuImg, p)
	if err != nil {
		return bootSpec{}, fmt.Errorf("image %s: /disk/%s: %w", image, disks[0], err)
	}
	return bootSpec{Disk: p, DiskFormat: format}, nil
}

// diskFormat says whether p is qcow2 or raw, and for qcow2 runs qemu-img
// check. A qcow2 with a backing file or an external data file is refused:
// either would be a path on this host, chosen by the image's author.
func diskFormat(ctx context.Context, qemuImg, p string) (string, error) {
	out, err := limitedCommand(ctx, qemuImgInfoCPUSeconds, qemuImg, "info", "--output=json", "-U", p).Output()
	if err != nil {
		return "", fmt.Errorf("corrupt or unreadable disk image: qemu-img info: %s", cmdErr(err))
	}
	var info struct {
		Format         string `json:"format"`
		BackingFile    string `json:"backing-filename"`
		FormatSpecific struct {
			Data struct {
				DataFile string `json:"data-file"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return "", fmt.Errorf("qemu-img info: %w", err)
	}
	switch info.Format {
	case "raw":
		return "raw", nil
	case "qcow2":
		if info.BackingFile != "" {
			return "", fmt.Errorf("qcow2 disk has a backing file (%s); a containerDisk must be self-contained", info.BackingFile)
		}
		// An external data file is a host path too: QEMU would read and
		// write it as the guest's disk.
		if f := info.FormatSpecific.Data.DataFile; f != "" {
			return "", fmt.Errorf("qcow2 disk has an external data file (%s); a containerDisk must be self-contained", f)
		}
		if out, err := limitedCommand(ctx, qemuImgCheckCPUSeconds, qemuImg, "check", "-U", "-f", "qcow2", p).CombinedOutput(); err != nil {
			return "", fmt.Errorf("corrupt qcow2 disk: qemu-img check: %s", firstLines(string(out), 3))
		}
		return "qcow2", nil
	default:
		return "", fmt.Errorf("disk format %q is not supported (want qcow2 or raw)", info.Format)
	}
}

// createOverlay makes the container's own qcow2 on top of the image's disk.
func createOverlay(ctx context.Context, qemuImg string, bs bootSpec, overlay string) error {
	out, err := limitedCommand(ctx, qemuImgCheckCPUSeconds, qemuImg, "create", "-q", "-f", "qcow2", "-F", bs.DiskFormat, "-b", bs.Disk, overlay).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img create overlay: %s", firstLines(string(out), 3))
	}
	return nil
}

func cmdErr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok && len(ee.Stderr) > 0 {
		return firstLines(string(ee.Stderr), 3)
	}
	return err.Error()
}

func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "; ")
}
