package critest

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The registries critest pulls from, by the names it checks in RepoTags
// (sigs.k8s.io/cri-tools v1.37.0 pkg/validate/consts.go, pkg/framework).
const (
	e2eImages = "registry.k8s.io/e2e-test-images/"
	criTools  = "gcr.io/k8s-staging-cri-tools/"
)

// Mirrored are the registry hosts the test containerd resolves through the
// loopback registry.
var Mirrored = []string{"registry.k8s.io", "gcr.io", "k8s.gcr.io"}

// rootfs is a tiny Linux userland from a static busybox: the applets as
// symlinks, the users and groups critest's images define, /tmp, /var/run.
type rootfs struct {
	busybox []byte
	applets []string
}

func newRootfs(busyboxPath string) (*rootfs, error) {
	b, err := os.ReadFile(busyboxPath)
	if err != nil {
		return nil, fmt.Errorf("critest images: %w (apt-get install busybox-static)", err)
	}
	out, err := exec.Command(busyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("critest images: %s --list: %w", busyboxPath, err)
	}
	return &rootfs{busybox: b, applets: strings.Fields(string(out))}, nil
}

type entry struct {
	name string
	mode int64
	kind byte
	data []byte
	link string
}

const (
	passwd = "root:x:0:0:root:/root:/bin/sh\n" +
		"www-data:x:33:33:www-data:/var/www:/bin/sh\n" +
		"default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	group = "root:x:0:\n" +
		"www-data:x:33:\n" +
		"default-user:x:1000:\n" +
		"group-defined-in-image:x:50000:default-user\n" +
		"nogroup:x:65534:\n"
)

func (r *rootfs) base() []entry {
	e := []entry{
		{name: "bin/", mode: 0o755, kind: tar.TypeDir},
		{name: "bin/busybox", mode: 0o755, kind: tar.TypeReg, data: r.busybox},
		{name: "etc/", mode: 0o755, kind: tar.TypeDir},
		{name: "etc/passwd", mode: 0o644, kind: tar.TypeReg, data: []byte(passwd)},
		{name: "etc/group", mode: 0o644, kind: tar.TypeReg, data: []byte(group)},
		{name: "home/", mode: 0o755, kind: tar.TypeDir},
		{name: "root/", mode: 0o700, kind: tar.TypeDir},
		{name: "tmp/", mode: 0o1777, kind: tar.TypeDir},
		{name: "usr/", mode: 0o755, kind: tar.TypeDir},
		{name: "usr/sbin/", mode: 0o755, kind: tar.TypeDir},
		{name: "var/", mode: 0o755, kind: tar.TypeDir},
		{name: "var/run/", mode: 0o755, kind: tar.TypeDir},
		{name: "var/www/", mode: 0o755, kind: tar.TypeDir},
	}
	for _, a := range r.applets {
		if a != "busybox" {
			// Hard links, as in upstream's busybox image: masking one applet
			// (critest masks /bin/ls) must not mask busybox itself.
			e = append(e, entry{name: "bin/" + a, mode: 0o755, kind: tar.TypeLink, link: "bin/busybox"})
		}
	}
	return e
}

// image is the busybox rootfs plus extra entries, with cfg.
func (r *rootfs) image(cfg v1.Config, extra ...entry) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	for _, e := range append(r.base(), extra...) {
		h := &tar.Header{Name: e.name, Mode: e.mode, Typeflag: e.kind, Linkname: e.link, ModTime: epoch, Size: int64(len(e.data))}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerBytes)), nil })
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS, cf.Created = "amd64", "linux", v1.Time{Time: epoch}
	if cfg.Env == nil {
		cfg.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	cf.Config = cfg
	return mutate.ConfigFile(img, cf)
}

// webServer serves an index page on port with busybox httpd, under the
// process name the tests look for (pidof nginx), and records its pid where
// nginx would.
func webServer(name string, port int) (v1.Config, []entry) {
	cmd := fmt.Sprintf("echo %s; echo $$ > /var/run/nginx.pid; exec -a httpd /usr/sbin/%s -f -p %d -h /var/www", name, name, port)
	return v1.Config{Cmd: []string{"/bin/sh", "-c", cmd}}, []entry{
		{name: "var/www/index.html", mode: 0o644, kind: tar.TypeReg, data: []byte("<h1>Welcome to " + name + "!</h1>\n")},
	}
}

// buildImages returns every image critest pulls, by reference. pauseTar is
// evelet's pause image ("": none); nnp is the set-uid program of the nonewprivs image.
func buildImages(ctx context.Context, r *rootfs, pauseTar string, nnp []byte) (map[string]v1.Image, error) {
	out := map[string]v1.Image{}
	add := func(ref string, cfg v1.Config, extra ...entry) error {
		img, err := r.image(cfg, extra...)
		if err != nil {
			return fmt.Errorf("critest image %s: %w", ref, err)
		}
		out[ref] = img
		return nil
	}
	if pauseTar != "" {
		pause, err := tarball.ImageFromPath(pauseTar, nil)
		if err != nil {
			return nil, fmt.Errorf("critest: pause image %s: %w", pauseTar, err)
		}
		out["registry.k8s.io/pause:3.9"] = pause
		out["k8s.gcr.io/pause:3.9"] = pause
	}

	busybox := r.busybox
	if err := add(e2eImages+"busybox:1.29-2", v1.Config{Cmd: []string{"sh"}}); err != nil {
		return nil, err
	}
	for _, w := range []struct{ ref, name string }{{e2eImages + "nginx:1.14-2", "nginx"}, {e2eImages + "httpd:2.4.39-4", "httpd"}} {
		cfg, extra := webServer(w.name, 80)
		extra = append(extra, entry{name: "usr/sbin/" + w.name, mode: 0o755, kind: tar.TypeReg, data: busybox})
		if err := add(w.ref, cfg, extra...); err != nil {
			return nil, err
		}
	}
	cfg, extra := webServer("nginx", 12003)
	extra = append(extra, entry{name: "usr/sbin/nginx", mode: 0o755, kind: tar.TypeReg, data: busybox})
	if err := add(criTools+"hostnet-nginx-amd64:latest", cfg, extra...); err != nil {
		return nil, err
	}
	if err := add(e2eImages+"nonewprivs:1.3", v1.Config{Cmd: []string{"/usr/local/bin/nnp"}},
		entry{name: "usr/local/", mode: 0o755, kind: tar.TypeDir},
		entry{name: "usr/local/bin/", mode: 0o755, kind: tar.TypeDir},
		entry{name: "usr/local/bin/nnp", mode: 0o4755, kind: tar.TypeReg, data: nnp}); err != nil {
		return nil, err
	}
	// image-user: busybox with USER set (cri-tools images/build IMAGE_USERS).
	for repo, user := range map[string]string{
		"test-image-user-uid":            "1002",
		"test-image-user-username":       "www-data",
		"test-image-user-uid-group":      "1003:1004",
		"test-image-user-username-group": "www-data:1004",
		"test-image-predefined-group":    "1000",
	} {
		if err := add(criTools+repo+":latest", v1.Config{Cmd: []string{"sh"}, User: user}); err != nil {
			return nil, err
		}
	}
	// image-test: busybox plus one empty file named after the image, so
	// that different names are different images.
	marker := func(n string) entry { return entry{name: n, mode: 0o644, kind: tar.TypeReg} }
	for _, n := range []string{"test-image-1", "test-image-2", "test-image-3", "test-image-latest"} {
		if err := add(criTools+n+":latest", v1.Config{Cmd: []string{"sh"}}, marker(n)); err != nil {
			return nil, err
		}
	}
	for _, tag := range []string{"test", "all"} {
		if err := add(criTools+"test-image-tag:"+tag, v1.Config{Cmd: []string{"sh"}}, marker(tag)); err != nil {
			return nil, err
		}
	}
	same, err := r.image(v1.Config{Cmd: []string{"sh"}}, marker("same-image"))
	if err != nil {
		return nil, err
	}
	for _, tag := range []string{"1", "2", "3"} {
		out[criTools+"test-image-tags:"+tag] = same
	}
	return out, nil
}

// buildNNP compiles testdata/nonewprivs statically.
func buildNNP(ctx context.Context, goBin, outDir string) ([]byte, error) {
	out := filepath.Join(outDir, "nnp")
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./testdata/nonewprivs")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("critest: building the nonewprivs program: %v\n%s", err, b)
	}
	return os.ReadFile(out)
}
