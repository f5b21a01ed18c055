// Package images builds the OCI images that evelet and its tests need,
// without a Docker engine or a registry: pause (the pod sandbox image) and a
// tiny busybox image for test workloads.
//
// Each Build function writes a docker-archive tarball (the format of
// `docker save`, which `ctr images import` reads) into an output directory
// and returns its path. Builds are deterministic: fixed file modes, owners
// and timestamps, so the same inputs give the same image digest. Results are
// cached: a tarball whose recorded content key matches the inputs is reused
// as it is. Every file is written to a temporary name and renamed into place,
// so an interrupted build never leaves a half-written tarball behind.
//
// The images are built for the machine's own architecture (runtime.GOARCH):
// the busybox binary comes from the host, and pause is compiled for the host.
package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/lf-edge/evelet/internal/atomicfile"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

const (
	// PauseRef is the reference of evelet's pod sandbox image. Point the
	// runtime's sandbox image setting at it (containerd: sandbox_image).
	PauseRef = "localhost/evelet/pause:3.10"
	// BusyboxRef is the reference of the test workload image.
	BusyboxRef = "localhost/evelet/busybox:1.36"

	// formatVersion is part of every content key: bump it whenever the
	// layout of a built image changes, so cached tarballs are rebuilt.
	formatVersion = "1"
)

// epoch is the timestamp given to every file and to the image config, so
// that builds are reproducible.
var epoch = time.Unix(0, 0).UTC()

// keySuffix names the sidecar file that records a tarball's content key.
const keySuffix = ".key"

// contentKey derives a cache key from the format version, the image
// reference, the target architecture and the digests of the inputs.
func contentKey(ref string, inputs ...[]byte) string {
	h := sha256.New()
	fmt.Fprintf(h, "evelet-images/%s\x00%s\x00linux/%s\x00", formatVersion, ref, runtime.GOARCH)
	for _, in := range inputs {
		sum := sha256.Sum256(in)
		h.Write(sum[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// cached reports whether tarPath exists and was built with key.
func cached(tarPath, key string) bool {
	got, err := os.ReadFile(tarPath + keySuffix)
	if err != nil || strings.TrimSpace(string(got)) != key {
		return false
	}
	st, err := os.Stat(tarPath)
	return err == nil && st.Mode().IsRegular() && st.Size() > 0
}

// writeImage writes img tagged as ref to tarPath (WriteTarball), then
// records key beside it. The key goes last: a crash in between leaves a
// tarball without a matching key, which is simply rebuilt next time.
func writeImage(ref string, img v1.Image, tarPath, key string) error {
	// Drop the old key first: from here until the new key is in place, the
	// tarball does not count as cached.
	if err := os.Remove(tarPath + keySuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("images: %w", err)
	}
	if err := WriteTarball(ref, img, tarPath); err != nil {
		return err
	}
	return atomicfile.WriteFile(tarPath+keySuffix, []byte(key+"\n"), 0o644)
}

// WriteTarball writes img tagged as ref to tarPath as a docker-archive
// tarball, temp-then-rename and synced, readable by everyone (an image
// holds nothing secret).
func WriteTarball(ref string, img v1.Image, tarPath string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("images: bad reference %q: %w", ref, err)
	}
	dir := filepath.Dir(tarPath)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("images: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(tarPath)+".tmp-*")
	if err != nil {
		return fmt.Errorf("images: %w", err)
	}
	tmpName := tmp.Name()
	tmp.Close()
	defer os.Remove(tmpName) // no-op after the rename
	if err := tarball.WriteToFile(tmpName, tag, img); err != nil {
		return fmt.Errorf("images: writing %s: %w", ref, err)
	}
	if err := os.Chmod(tmpName, 0o644); err != nil {
		return fmt.Errorf("images: %w", err)
	}
	if err := syncFile(tmpName); err != nil {
		return err
	}
	if err := os.Rename(tmpName, tarPath); err != nil {
		return fmt.Errorf("images: %w", err)
	}
	return nil
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("images: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("images: sync %s: %w", path, err)
	}
	return nil
}

// singleLayerImage assembles a linux image for the host architecture with
// one layer (an uncompressed tar in memory) and the given container config.
func singleLayerImage(layerTar []byte, createdBy string, cfg v1.Config) (v1.Image, error) {
	return SingleLayerImage(layerTar, runtime.GOARCH, createdBy, cfg)
}

// SingleLayerImage assembles a linux image for arch with one layer (an
// uncompressed tar in memory) and the given container config; every time
// in it is the epoch, so the same inputs give the same digest.
func SingleLayerImage(layerTar []byte, arch, createdBy string, cfg v1.Config) (v1.Image, error) {
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("images: layer: %w", err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: epoch},
			CreatedBy: createdBy,
			Comment:   "built by github.com/lf-edge/evelet/images",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Architecture = arch
	cf.OS = "linux"
	cf.Created = v1.Time{Time: epoch}
	cf.Config = cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	return img, nil
}

// Import loads a docker-archive or OCI tarball into containerd with ctr,
// unpacked for ctr's default snapshotter (overlayfs, unless
// $CONTAINERD_SNAPSHOTTER says otherwise). Use ImportForSnapshotter when the
// CRI plugin is configured with another snapshotter: the CRI only runs
// images unpacked for its own snapshotter. For Kubernetes the namespace is
// "k8s.io".
func Import(ctx context.Context, ctrBinary, containerdSocket, namespace, tarPath string) error {
	return ImportForSnapshotter(ctx, ctrBinary, containerdSocket, namespace, "", tarPath)
}

// ImportForSnapshotter is Import with an explicit snapshotter ("" for ctr's
// default). ctrBinary "" means "ctr" from $PATH.
func ImportForSnapshotter(ctx context.Context, ctrBinary, containerdSocket, namespace, snapshotter, tarPath string) error {
	if ctrBinary == "" {
		ctrBinary = "ctr"
	}
	if namespace == "" {
		return errors.New("images: import: empty containerd namespace")
	}
	if _, err := os.Stat(tarPath); err != nil {
		return fmt.Errorf("images: import: %w", err)
	}
	// Fail fast (ctr would retry the dial for 10 s) when nothing listens.
	sock := strings.TrimPrefix(containerdSocket, "unix://")
	if st, err := os.Stat(sock); err != nil {
		return fmt.Errorf("images: import: containerd socket: %w", err)
	} else if st.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("images: import: %s is not a socket", sock)
	}
	// ctr unpacks by default (--no-unpack=false); it keeps the image for the
	// host platform only, which is the platform the images are built for.
	args := []string{"--address", sock, "--namespace", namespace, "images", "import"}
	if snapshotter != "" {
		args = append(args, "--snapshotter", snapshotter)
	}
	args = append(args, tarPath)
	cmd := exec.CommandContext(ctx, ctrBinary, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("images: %s %s: %w: %s", ctrBinary, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
