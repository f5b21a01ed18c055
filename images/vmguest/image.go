package vmguest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"path/filepath"
	"time"

	"github.com/lf-edge/evelet/images"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

var epoch = time.Unix(0, 0).UTC()

// writeKernelImage writes KernelRef (/disk/vmlinuz, /disk/initrd,
// /disk/cmdline) as a docker-archive tarball.
func writeKernelImage(tarPath string, vmlinuz, initrd, cmdline []byte) error {
	return writeDiskFiles(tarPath, KernelRef, map[string][]byte{
		KernelPath:  vmlinuz,
		InitrdPath:  initrd,
		CmdlinePath: cmdline,
	})
}

// writeDiskImage writes DiskRef (/disk/guest.qcow2) as a docker-archive
// tarball.
func writeDiskImage(tarPath string, qcow2 []byte) error {
	return writeDiskFiles(tarPath, DiskRef, map[string][]byte{DiskPath: qcow2})
}

// writeDiskFiles builds a one-layer image holding /disk and the given
// files (all directly under /disk), in the containerDisk shape: no
// command, files readable by everyone (KubeVirt's convention; QEMU opens
// them read-only and writes to an overlay).
func writeDiskFiles(tarPath, ref string, files map[string][]byte) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := func(h *tar.Header) error {
		h.ModTime, h.Format = epoch, tar.FormatPAX
		return tw.WriteHeader(h)
	}
	if err := hdr(&tar.Header{Name: "disk/", Typeflag: tar.TypeDir, Mode: 0o555}); err != nil {
		return fmt.Errorf("vmguest: %w", err)
	}
	for _, p := range []string{KernelPath, InitrdPath, CmdlinePath, DiskPath} {
		data, ok := files[p]
		if !ok {
			continue
		}
		if filepath.Dir(p) != "/disk" {
			return fmt.Errorf("vmguest: %s is not directly under /disk", p)
		}
		if err := hdr(&tar.Header{Name: p[1:], Typeflag: tar.TypeReg, Mode: 0o444, Size: int64(len(data))}); err != nil {
			return fmt.Errorf("vmguest: %w", err)
		}
		if _, err := tw.Write(data); err != nil {
			return fmt.Errorf("vmguest: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("vmguest: %w", err)
	}
	img, err := images.SingleLayerImage(buf.Bytes(), "amd64", "evelet vmguest.Build", v1.Config{})
	if err != nil {
		return fmt.Errorf("vmguest: %w", err)
	}
	return images.WriteTarball(ref, img, tarPath)
}
