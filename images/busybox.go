package images

import (
	"fmt"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// BusyboxApplets are the commands the busybox image provides as symlinks in
// /bin. Test workloads may rely on exactly these.
var BusyboxApplets = []string{
	"sh", "sleep", "echo", "cat", "ls", "hostname", "wget", "nc", "httpd",
	"ip", "ifconfig", "true", "date",
}

const (
	busyboxTar = "busybox.tar"
	etcPasswd  = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	etcGroup   = "root:x:0:\nnogroup:x:65534:\n"
	imagePath  = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// BuildBusybox builds BusyboxRef from a static busybox binary on the host
// (Debian: package busybox-static, /bin/busybox) and writes it to
// outDir/busybox.tar, unless that tarball is already built from the same
// binary. The image has one layer: /bin/busybox, the BusyboxApplets as
// symlinks to it, /tmp (1777), /etc/passwd and /etc/group with root and
// nobody; its command is ["sh"]. The binary must be static: the image has
// no libraries.
func BuildBusybox(busyboxPath, outDir string) (tarPath string, err error) {
	bin, err := os.ReadFile(busyboxPath)
	if err != nil {
		return "", fmt.Errorf("images: busybox: %w", err)
	}
	tarPath = filepath.Join(outDir, busyboxTar)
	key := contentKey(BusyboxRef, bin)
	if cached(tarPath, key) {
		return tarPath, nil
	}
	img, err := busyboxImage(bin)
	if err != nil {
		return "", err
	}
	if err := writeImage(BusyboxRef, img, tarPath, key); err != nil {
		return "", err
	}
	return tarPath, nil
}

func busyboxImage(bin []byte) (v1.Image, error) {
	entries := []entry{
		dir("/bin", 0o755),
		file("/bin/busybox", 0o755, bin),
		dir("/etc", 0o755),
		file("/etc/passwd", 0o644, []byte(etcPasswd)),
		file("/etc/group", 0o644, []byte(etcGroup)),
		dir("/root", 0o700),
		dir("/tmp", 0o1777),
	}
	for _, a := range BusyboxApplets {
		entries = append(entries, symlink("/bin/"+a, "busybox"))
	}
	layer, err := layerTar(entries)
	if err != nil {
		return nil, err
	}
	return singleLayerImage(layer, "evelet images.BuildBusybox", v1.Config{
		Cmd: []string{"sh"},
		Env: []string{"PATH=" + imagePath},
	})
}
