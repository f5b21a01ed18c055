package images

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

const hostBusybox = "/bin/busybox"

func needBusybox(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(hostBusybox); err != nil {
		t.Skipf("needs a static busybox at %s (Debian: apt-get install busybox-static): %v", hostBusybox, err)
	}
}

func goBinary(t *testing.T) string {
	t.Helper()
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); runtime.GOROOT() != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("needs the go command: %v", err)
	}
	return p
}

// loadImage opens the image tagged ref in a docker-archive tarball.
func loadImage(t *testing.T, tarPath, ref string) v1.Image {
	t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(tarPath, &tag)
	if err != nil {
		t.Fatalf("reading %s from %s: %v", ref, tarPath, err)
	}
	return img
}

// layerFiles returns the single layer's tar headers and regular file
// contents by path.
func layerFiles(t *testing.T, img v1.Image) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("image has %d layers, want 1", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	hdrs := map[string]*tar.Header{}
	data := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := "/" + filepath.Clean(h.Name)
		hdrs[p] = h
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			data[p] = b
		}
	}
	return hdrs, data
}

func digest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestBuildBusyboxDeterministic(t *testing.T) {
	needBusybox(t)
	p1, err := BuildBusybox(hostBusybox, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p2, err := BuildBusybox(hostBusybox, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img1, img2 := loadImage(t, p1, BusyboxRef), loadImage(t, p2, BusyboxRef)
	if d1, d2 := digest(t, img1), digest(t, img2); d1 != d2 {
		t.Fatalf("two builds differ: %s vs %s", d1, d2)
	}
	b1, _ := os.ReadFile(p1)
	b2, _ := os.ReadFile(p2)
	if !bytes.Equal(b1, b2) {
		t.Errorf("the two tarballs differ byte-wise")
	}

	cf, err := img1.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}
	if len(cf.Config.Entrypoint) != 0 {
		t.Errorf("entrypoint %q, want none", cf.Config.Entrypoint)
	}
	if !reflect.DeepEqual(cf.Config.Cmd, []string{"sh"}) {
		t.Errorf("cmd %q, want [sh]", cf.Config.Cmd)
	}
	if !reflect.DeepEqual(cf.Config.Env, []string{"PATH=" + imagePath}) {
		t.Errorf("env %q", cf.Config.Env)
	}
	if !cf.Created.Time.Equal(epoch) {
		t.Errorf("created %v, want %v", cf.Created.Time, epoch)
	}

	hdrs, data := layerFiles(t, img1)
	want, _ := os.ReadFile(hostBusybox)
	if !bytes.Equal(data["/bin/busybox"], want) {
		t.Errorf("/bin/busybox differs from %s", hostBusybox)
	}
	if h := hdrs["/bin/busybox"]; h == nil || h.Mode&0o777 != 0o755 {
		t.Errorf("/bin/busybox header %+v, want mode 0755", h)
	}
	for _, a := range BusyboxApplets {
		h := hdrs["/bin/"+a]
		if h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
			t.Errorf("/bin/%s: %+v, want a symlink to busybox", a, h)
		}
	}
	if h := hdrs["/tmp"]; h == nil || h.Typeflag != tar.TypeDir || h.Mode&0o7777 != 0o1777 {
		t.Errorf("/tmp: %+v, want a 1777 directory", h)
	}
	if got := string(data["/etc/passwd"]); !bytes.Contains([]byte(got), []byte("root:x:0:0:")) ||
		!bytes.Contains([]byte(got), []byte("nobody:x:65534:65534:")) {
		t.Errorf("/etc/passwd = %q", got)
	}
	for p, h := range hdrs {
		if !h.ModTime.Equal(epoch) || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d, want epoch and root", p, h.ModTime, h.Uid, h.Gid)
		}
	}
}

func TestBuildBusyboxCache(t *testing.T) {
	needBusybox(t)
	out := t.TempDir()
	p, err := BuildBusybox(hostBusybox, out)
	if err != nil {
		t.Fatal(err)
	}
	st1, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := BuildBusybox(hostBusybox, out)
	if err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(p2)
	if p2 != p || !os.SameFile(st1, st2) || !st1.ModTime().Equal(st2.ModTime()) {
		t.Errorf("second build rewrote the tarball")
	}

	// A different input (another binary) must rebuild.
	other := filepath.Join(t.TempDir(), "busybox")
	bin, _ := os.ReadFile(hostBusybox)
	if err := os.WriteFile(other, append(bin, 0), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := BuildBusybox(other, out); err != nil {
		t.Fatal(err)
	}
	st3, _ := os.Stat(p)
	if os.SameFile(st1, st3) {
		t.Errorf("changed input did not rebuild the tarball")
	}

	// A tarball without its key is rebuilt, and no temporary files remain.
	if err := os.Remove(p + keySuffix); err != nil {
		t.Fatal(err)
	}
	if _, err := BuildBusybox(hostBusybox, out); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(out)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !reflect.DeepEqual(names, []string{"busybox.tar", "busybox.tar.key"}) {
		t.Errorf("output dir holds %q", names)
	}
}

func TestBuildPause(t *testing.T) {
	goBin := goBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out := t.TempDir()
	p, err := BuildPause(ctx, goBin, "", out)
	if err != nil {
		t.Fatal(err)
	}
	img := loadImage(t, p, PauseRef)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cf.Config.Entrypoint, []string{"/pause"}) || len(cf.Config.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q, want [/pause] and none", cf.Config.Entrypoint, cf.Config.Cmd)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}
	hdrs, data := layerFiles(t, img)
	if len(hdrs) != 1 || hdrs["/pause"] == nil || hdrs["/pause"].Mode&0o777 != 0o755 {
		t.Fatalf("layer entries %v, want only /pause 0755", hdrs)
	}
	ef, err := elf.NewFile(bytes.NewReader(data["/pause"]))
	if err != nil {
		t.Fatalf("/pause is not ELF: %v", err)
	}
	for _, prog := range ef.Progs {
		if prog.Type == elf.PT_INTERP {
			t.Errorf("/pause is dynamically linked")
		}
	}
	if ef.Section(".symtab") != nil {
		t.Errorf("/pause is not stripped")
	}

	// Rebuilding the same source reuses the tarball.
	st1, _ := os.Stat(p)
	p2, err := BuildPause(ctx, goBin, "", out)
	if err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(p2)
	if !os.SameFile(st1, st2) {
		t.Errorf("second build rewrote the pause tarball")
	}
	if d1, d2 := digest(t, img), digest(t, loadImage(t, p2, PauseRef)); d1 != d2 {
		t.Errorf("digest changed between builds: %s vs %s", d1, d2)
	}
}

func TestLayerTarRejectsOrphans(t *testing.T) {
	if _, err := layerTar([]entry{file("/a/b", 0o644, nil)}); err == nil {
		t.Error("a file without its parent directory was accepted")
	}
	if _, err := layerTar([]entry{dir("/a", 0o755), dir("/a", 0o755)}); err == nil {
		t.Error("a duplicate path was accepted")
	}
}

func TestImportMissingSocket(t *testing.T) {
	tarPath := filepath.Join(t.TempDir(), "x.tar")
	if err := os.WriteFile(tarPath, []byte("not a tarball"), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "none.sock")
	start := time.Now()
	err := Import(context.Background(), "ctr", sock, "k8s.io", tarPath)
	if err == nil || !errors.Is(err, os.ErrNotExist) || !bytes.Contains([]byte(err.Error()), []byte(sock)) {
		t.Fatalf("import into a missing containerd: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v to notice the missing socket", d)
	}
}
