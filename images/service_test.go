package images

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

const serviceTestRef = "docker.io/lfedge/evelet:test"

// fakeArch writes small stand-in inputs for one architecture.
func fakeArch(t *testing.T, arch string) ServiceArch {
	t.Helper()
	d := t.TempDir()
	w := func(name, content string) string {
		p := filepath.Join(d, name)
		if err := os.WriteFile(p, []byte(content), 0o700); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return ServiceArch{Arch: arch,
		Bin:      map[string]string{"evelet": w("evelet", "agent "+arch), "evelet-cni": w("evelet-cni", "cni "+arch)},
		CNI:      map[string]string{"bridge": w("bridge", "bridge "+arch), "host-local": w("host-local", "hl "+arch)},
		PauseTar: w("pause.tar", "pause "+arch),
	}
}

// TestServiceImageReproducible: two builds of the same inputs give the same
// index digest and byte-identical archives; the OCI layout holds one image
// per architecture with its platform; the files sit where the docs say,
// executable; the label carries the service config EVE's build reads; a
// changed input changes the digest.
func TestServiceImageReproducible(t *testing.T) {
	arches := []ServiceArch{fakeArch(t, "amd64"), fakeArch(t, "arm64")}
	out1, out2 := t.TempDir(), t.TempDir()
	d1, err := WriteService(serviceTestRef, arches, out1)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := WriteService(serviceTestRef, arches, out2)
	if err != nil {
		t.Fatal(err)
	}
	if d1 != d2 {
		t.Fatalf("two builds of the same inputs: %s and %s", d1, d2)
	}
	for _, f := range []string{"evelet-service-amd64.tar", "evelet-service-arm64.tar", "evelet-service.digest"} {
		b1, err1 := os.ReadFile(filepath.Join(out1, f))
		b2, err2 := os.ReadFile(filepath.Join(out2, f))
		if err1 != nil || err2 != nil || string(b1) != string(b2) {
			t.Errorf("%s differs between builds (%v %v)", f, err1, err2)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(out1, "evelet-service.digest")); strings.TrimSpace(string(b)) != d1.String() {
		t.Errorf("digest file %q, want %s", b, d1)
	}

	// The layout, as another tool reads it.
	lp, err := layout.FromPath(filepath.Join(out1, "evelet-service.oci"))
	if err != nil {
		t.Fatal(err)
	}
	// The layout's index.json is the multi-architecture index itself.
	idx, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(out1, "evelet-service.oci", "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	if h, _, err := v1.SHA256(bytes.NewReader(raw)); err != nil || h != d1 {
		t.Fatalf("index.json is %s, want the index %s (%v)", h, d1, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	plats := map[string]v1.Hash{}
	for _, m := range im.Manifests {
		if m.Platform == nil || m.Platform.OS != "linux" {
			t.Errorf("manifest %s without a linux platform: %+v", m.Digest, m.Platform)
			continue
		}
		plats[m.Platform.Architecture] = m.Digest
	}
	if len(plats) != 2 || plats["amd64"] == (v1.Hash{}) || plats["arm64"] == (v1.Hash{}) {
		t.Fatalf("platforms %v, want amd64 and arm64", plats)
	}
	for arch, dg := range plats {
		img, err := idx.Image(dg)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Architecture != arch || cf.OS != "linux" {
			t.Errorf("%s: config says %s/%s", arch, cf.OS, cf.Architecture)
		}
		var got ServiceConfigSpec
		if err := json.Unmarshal([]byte(cf.Config.Labels[ServiceConfigL]), &got); err != nil {
			t.Fatalf("%s: label %s: %v", arch, ServiceConfigL, err)
		}
		if got.Net != "host" || len(got.Binds) == 0 || len(got.Capabilities) == 0 {
			t.Errorf("%s: service config %+v", arch, got)
		}
		for _, c := range got.Capabilities {
			if strings.EqualFold(c, "all") {
				t.Errorf("%s: service config asks for every capability", arch)
			}
		}
		files := unpackedFiles(t, img)
		for _, want := range []string{"usr/bin/evelet", "usr/bin/evelet-cni", "opt/cni/bin/bridge", "opt/cni/bin/host-local"} {
			h, ok := files[want]
			if !ok || h.Mode&0o111 == 0 || h.Uid != 0 {
				t.Errorf("%s: %s missing or not an executable of root: %+v", arch, want, h)
			}
		}
		if _, ok := files[strings.TrimPrefix(ServicePauseTar, "/")]; !ok {
			t.Errorf("%s: no pause image at %s", arch, ServicePauseTar)
		}
		if cf.Config.Entrypoint[0] != ServiceBinDir+"/evelet" {
			t.Errorf("%s: entrypoint %v", arch, cf.Config.Entrypoint)
		}
	}

	// A changed input is a different image.
	if err := os.WriteFile(arches[1].CNI["bridge"], []byte("bridge arm64 v2"), 0o700); err != nil {
		t.Fatal(err)
	}
	d3, err := WriteService(serviceTestRef, arches, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if d3 == d1 {
		t.Error("a changed plugin left the digest as it was")
	}
}

func TestServiceImageRefusesBadInput(t *testing.T) {
	a := fakeArch(t, "amd64")
	delete(a.Bin, "evelet")
	if _, err := WriteService(serviceTestRef, []ServiceArch{a}, t.TempDir()); err == nil || !strings.Contains(err.Error(), "no evelet binary") {
		t.Errorf("no evelet: %v", err)
	}
	a = fakeArch(t, "amd64")
	a.CNI["../escape"] = a.CNI["bridge"]
	if _, err := WriteService(serviceTestRef, []ServiceArch{a}, t.TempDir()); err == nil || !strings.Contains(err.Error(), "bad file name") {
		t.Errorf("a name with a slash: %v", err)
	}
	a = fakeArch(t, "amd64")
	if _, err := WriteService(serviceTestRef, []ServiceArch{a, fakeArch(t, "amd64")}, t.TempDir()); err == nil {
		t.Error("an architecture twice was accepted")
	}
}

// TestServiceImageRunsEvelet: the image built around the real evelet
// binary (EVELET_BIN, as `make build` makes it: static) runs `evelet
// version` chrooted into the unpacked image, which has no libc.
func TestServiceImageRunsEvelet(t *testing.T) {
	bin := os.Getenv("EVELET_BIN")
	if bin == "" {
		t.Skip("set EVELET_BIN to the built evelet (make test does)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to chroot into the unpacked image")
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	interp := f.Section(".interp")
	f.Close()
	if interp != nil {
		t.Fatalf("%s is dynamically linked; the service image needs static binaries (make build builds with CGO_ENABLED=0)", bin)
	}
	a := fakeArch(t, "amd64")
	a.Bin = map[string]string{"evelet": bin}
	out := t.TempDir()
	if _, err := WriteService(serviceTestRef, []ServiceArch{a}, out); err != nil {
		t.Fatal(err)
	}
	img := loadImage(t, filepath.Join(out, "evelet-service-amd64.tar"), serviceTestRef)
	root := t.TempDir()
	unpack(t, img, root)
	cmd := exec.Command(ServiceBinDir+"/evelet", "version")
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=" + ServiceBinDir}
	outb, err := cmd.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(outb), "evelet ") {
		t.Fatalf("evelet version in the unpacked image: %v %q", err, outb)
	}
	t.Logf("from the image: %s", strings.TrimSpace(string(outb)))
}

func unpackedFiles(t *testing.T, img v1.Image) map[string]*tar.Header {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	files := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimSuffix(h.Name, "/")] = h
	}
}

// unpack writes the image's directories and regular files under root.
func unpack(t *testing.T, img v1.Image, root string) {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(root, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			w, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode)&0o777)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(w, tr); err != nil {
				t.Fatal(err)
			}
			w.Close()
		}
	}
}
