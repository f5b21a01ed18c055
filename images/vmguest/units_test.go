package vmguest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func TestNewcArchiveIsReadByGNUCpio(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("GNU cpio is not installed (hack/install-prereqs.sh installs it)")
	}
	gz, err := newcArchive([]cpioEntry{
		{path: "/dev", mode: sIFDIR | 0o755},
		{path: "/dev/console", mode: sIFCHR | 0o600, rdevMj: 5, rdevMn: 1},
		{path: "/bin", mode: sIFDIR | 0o755},
		{path: "/bin/busybox", mode: sIFREG | 0o755, data: []byte("odd length!")},
		{path: "/bin/sh", mode: sIFLNK | 0o777, data: []byte("busybox")},
	})
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(zr)
	if len(raw)%4 != 0 {
		t.Errorf("archive is %d bytes, not 4-aligned", len(raw))
	}
	cmd := exec.Command("cpio", "-itv", "--quiet")
	cmd.Stdin = bytes.NewReader(raw)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -itv: %v: %s", err, out)
	}
	listing := string(out)
	for _, want := range []string{"drwxr-xr-x", "crw-------", "5,   1", "dev/console", "-rwxr-xr-x", "11 ", "bin/busybox", "bin/sh -> busybox"} {
		if !strings.Contains(listing, want) {
			t.Errorf("cpio listing lacks %q:\n%s", want, listing)
		}
	}
	// Same entries, same bytes.
	again, _ := newcArchive([]cpioEntry{
		{path: "/bin", mode: sIFDIR | 0o755},
		{path: "/bin/sh", mode: sIFLNK | 0o777, data: []byte("busybox")},
		{path: "/bin/busybox", mode: sIFREG | 0o755, data: []byte("odd length!")},
		{path: "/dev", mode: sIFDIR | 0o755},
		{path: "/dev/console", mode: sIFCHR | 0o600, rdevMj: 5, rdevMn: 1},
	})
	if !bytes.Equal(gz, again) {
		t.Error("the same entries in another order gave another archive")
	}
}

func TestNewcArchiveRejectsBadTrees(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []cpioEntry
		want    string
	}{
		{"no parent", []cpioEntry{{path: "/a/b", mode: sIFREG}}, "without its parent"},
		{"duplicate", []cpioEntry{{path: "/a", mode: sIFREG}, {path: "/a/", mode: sIFREG}}, "duplicate"},
		{"relative", []cpioEntry{{path: "a", mode: sIFREG}}, "bad initramfs path"},
		{"root", []cpioEntry{{path: "/", mode: sIFDIR}}, "bad initramfs path"},
	} {
		if _, err := newcArchive(tc.entries); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestResolveModulesPutsDependenciesFirst(t *testing.T) {
	imgs := buildImages(t)
	k, err := fetchKernel(context.Background(), filepath.Join(filepath.Dir(imgs.Disk), "cache"))
	if err != nil {
		t.Fatal(err)
	}
	order, err := resolveModules(k.moduleDir(), guestModules)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, rel := range order {
		pos[moduleName(rel)] = i
	}
	for _, w := range guestModules {
		if _, ok := pos[w]; !ok {
			t.Errorf("wanted module %s is not in the load order %v", w, order)
		}
	}
	for i, rel := range order {
		deps, err := moduleDepends(filepath.Join(k.moduleDir(), rel))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range deps {
			if j, ok := pos[d]; ok && j > i {
				t.Errorf("%s is loaded before its dependency %s", rel, d)
			}
		}
	}
	// virtio_net needs net_failover needs failover: all there, in order.
	if !(pos["failover"] < pos["net_failover"] && pos["net_failover"] < pos["virtio_net"]) {
		t.Errorf("failover, net_failover, virtio_net out of order: %v", order)
	}
	if _, err := resolveModules(k.moduleDir(), []string{"no_such_module"}); err == nil || !strings.Contains(err.Error(), "no_such_module") {
		t.Errorf("unknown module: err = %v", err)
	}
}

// TestImagesHoldTheBuiltFiles opens the tarballs as ctr would and checks
// the tag, the platform and that /disk holds exactly the raw outputs.
func TestImagesHoldTheBuiltFiles(t *testing.T) {
	imgs := buildImages(t)
	for _, tc := range []struct {
		tar, ref string
		files    map[string]string
	}{
		{imgs.KernelTar, KernelRef, map[string]string{"disk/vmlinuz": imgs.Kernel, "disk/initrd": imgs.Initrd, "disk/cmdline": imgs.Cmdline}},
		{imgs.DiskTar, DiskRef, map[string]string{"disk/guest.qcow2": imgs.Disk}},
	} {
		tag, err := name.NewTag(tc.ref)
		if err != nil {
			t.Fatal(err)
		}
		img, err := tarball.ImageFromPath(tc.tar, &tag)
		if err != nil {
			t.Fatalf("%s: %v", tc.tar, err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.OS != "linux" || cf.Architecture != "amd64" {
			t.Errorf("%s: platform %s/%s", tc.ref, cf.OS, cf.Architecture)
		}
		layers, err := img.Layers()
		if err != nil || len(layers) != 1 {
			t.Fatalf("%s: %d layers, %v", tc.ref, len(layers), err)
		}
		rc, err := layers[0].Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		seen := map[string]bool{}
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Typeflag == tar.TypeDir {
				continue
			}
			want, ok := tc.files[h.Name]
			if !ok {
				t.Errorf("%s: unexpected file %s", tc.ref, h.Name)
				continue
			}
			seen[h.Name] = true
			got, _ := io.ReadAll(tr)
			raw, err := os.ReadFile(want)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, raw) {
				t.Errorf("%s: %s differs from %s", tc.ref, h.Name, want)
			}
		}
		rc.Close()
		if len(seen) != len(tc.files) {
			t.Errorf("%s: holds %v, want %v", tc.ref, seen, tc.files)
		}
	}
	cmdline, _ := os.ReadFile(imgs.Cmdline)
	if strings.TrimSpace(string(cmdline)) != Cmdline {
		t.Errorf("cmdline file = %q, want %q", cmdline, Cmdline)
	}
}

// TestDiskLayout checks the disk as firmware sees it: an MBR with the
// SYSLINUX boot code, one active partition at 1 MiB, and a FAT file
// system in it holding the kernel, initramfs and SYSLINUX.
func TestDiskLayout(t *testing.T) {
	imgs := buildImages(t)
	for _, tool := range []string{"qemu-img", "mdir"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (hack/install-prereqs.sh installs it)", tool)
		}
	}
	raw := filepath.Join(t.TempDir(), "disk.raw")
	if out, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "raw", imgs.Disk, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	mbrCode, err := readMBR()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b[:len(mbrCode)], mbrCode) || b[510] != 0x55 || b[511] != 0xAA {
		t.Fatal("sector 0 is not SYSLINUX's MBR with a boot signature")
	}
	e := b[446:462]
	start, size := binary.LittleEndian.Uint32(e[8:]), binary.LittleEndian.Uint32(e[12:])
	if e[0] != 0x80 || start != partStart || int(start+size)*sector != len(b) {
		t.Fatalf("partition entry % x: want active, start %d, ending at the disk's end (%d bytes)", e, partStart, len(b))
	}
	for _, other := range [][]byte{b[462:478], b[478:494], b[494:510]} {
		if !bytes.Equal(other, make([]byte, 16)) {
			t.Errorf("unexpected second partition entry % x", other)
		}
	}
	cmd := exec.Command("mdir", "-a", "-b", "-i", raw+"@@1M", "::/")
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1", "MTOOLSRC=/dev/null")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mdir: %v: %s", err, out)
	}
	for _, f := range []string{"vmlinuz", "initrd", "syslinux.cfg", "ldlinux.sys", "ldlinux.c32"} {
		if !strings.Contains(strings.ToLower(string(out)), "::/"+f) {
			t.Errorf("FAT partition lacks %s:\n%s", f, out)
		}
	}
}

func TestBuildReusesUpToDateOutputs(t *testing.T) {
	imgs := buildImages(t)
	before, err := os.Stat(imgs.DiskTar)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Build(context.Background(), filepath.Join(filepath.Dir(imgs.Disk), "cache"), filepath.Dir(imgs.Disk))
	if err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(again.DiskTar)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
		t.Error("a second Build with the same inputs rewrote the disk image")
	}
}

func TestKernelPackageParsesAptOutput(t *testing.T) {
	m := dependsRE.FindSubmatch([]byte("linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-57-cloud-amd64\n"))
	if m == nil || string(m[1]) != "linux-image-6.1.0-57-cloud-amd64" {
		t.Errorf("parsed %q", m)
	}
	if dependsRE.Match([]byte("linux-image-cloud-amd64\n  Depends: <linux-image-6.1.0-57-cloud-amd64>\n")) {
		t.Error("matched a virtual (bracketed) dependency")
	}
}
