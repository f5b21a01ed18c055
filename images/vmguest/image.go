package vmguest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
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
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		return fmt.Errorf("vmguest: layer: %w", err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: epoch},
			CreatedBy: "evelet vmguest.Build",
			Comment:   "built by github.com/lf-edge/evelet/images/vmguest",
		},
	})
	if err != nil {
		return fmt.Errorf("vmguest: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("vmguest: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: epoch}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return fmt.Errorf("vmguest: %w", err)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("vmguest: bad reference %q: %w", ref, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(tarPath), "."+filepath.Base(tarPath)+".tmp-*")
	if err != nil {
		return fmt.Errorf("vmguest: %w", err)
	}
	tmpName := tmp.Name()
	tmp.Close()
	defer os.Remove(tmpName) // no-op after the rename
	if err := tarball.WriteToFile(tmpName, tag, img); err != nil {
		return fmt.Errorf("vmguest: writing %s: %w", ref, err)
	}
	// Nothing secret in it; readable like the raw outputs beside it.
	if err := os.Chmod(tmpName, 0o644); err != nil {
		return fmt.Errorf("vmguest: %w", err)
	}
	if err := syncPath(tmpName); err != nil {
		return err
	}
	if err := os.Rename(tmpName, tarPath); err != nil {
		return fmt.Errorf("vmguest: %w", err)
	}
	return nil
}

func syncPath(p string) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("vmguest: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("vmguest: sync %s: %w", p, err)
	}
	return nil
}
