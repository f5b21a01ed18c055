package vm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The extracted disks under images/ are a cache of containerd's images, and
// the kubelet's image GC removes images through containerd, which knows
// nothing of the cache. Without pruning, every VM image a device ever ran
// stays on its disk for good.
//
// An entry goes when no VM container's boot files are in it and no image in
// containerd leads to its manifest (directly, or through an index). This
// asks containerd's image records, not its content store, so it does not
// depend on when containerd's own GC removes the blobs. A manifest that
// another name still refers to keeps its entry.

// pruneTimeout bounds one sweep (containerd may be slow to answer at boot).
const pruneTimeout = time.Minute

// ImageRemoved is called by the CRI image service after an image is
// removed (cri.ImageObserver).
func (b *Backend) ImageRemoved(ctx context.Context) {
	b.pruneDisksLogged(ctx)
}

// pruneDisksLogged prunes and logs; a failed sweep is retried by the next.
func (b *Backend) pruneDisksLogged(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pruneTimeout)
	defer cancel()
	removed, err := b.pruneDisks(ctx)
	for _, d := range removed {
		b.log.WithField("dir", d).Info("VM image disk removed: no VM uses it and its image is gone")
	}
	if err != nil {
		b.log.WithError(err).Warn("pruning VM image disks")
	}
}

// pruneDisks removes the unused entries of the disk cache and what a crash
// mid-extraction left (<hex>.tmp), unless that can be resumed for an image
// containerd still has; it returns the directories removed.
func (b *Backend) pruneDisks(ctx context.Context) ([]string, error) {
	// Exclusive against CreateContainer between resolving a disk and saving
	// the container that uses it, and against an extraction starting.
	b.diskUse.Lock()
	defer b.diskUse.Unlock()
	b.imageMu.Lock()
	defer b.imageMu.Unlock()
	root := filepath.Join(b.store.dir, imagesDir)
	ents, err := os.ReadDir(root)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	cs, err := b.store.containers()
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	for _, c := range cs {
		for _, f := range []string{c.Boot.Disk, c.Boot.Kernel, c.Boot.Initrd} {
			if f != "" {
				used[filepath.Dir(f)] = true
			}
		}
	}
	var removed []string
	var known map[string]bool // asked once, when an entry is unused
	for _, e := range ents {
		dir := filepath.Join(root, e.Name())
		if hex, ok := strings.CutSuffix(e.Name(), ".tmp"); ok {
			if _, ok := b.extracting.Load(hex); ok {
				continue // being extracted now
			}
			// A cut extraction of an image containerd still has is resumed
			// by the kubelet's next CreateContainer (extract.go).
			if _, err := os.Lstat(filepath.Join(root, hex)); os.IsNotExist(err) && hasCheckpoint(dir, hex) {
				if known == nil {
					if known, err = b.images.manifestDigests(ctx); err != nil {
						return removed, err
					}
				}
				if known["sha256:"+hex] {
					continue
				}
			}
			if err := os.RemoveAll(dir); err != nil {
				return removed, err
			}
			removed = append(removed, dir)
			continue
		}
		if used[dir] || !e.IsDir() {
			continue
		}
		if known == nil {
			if known, err = b.images.manifestDigests(ctx); err != nil {
				return removed, err
			}
		}
		if known["sha256:"+e.Name()] {
			continue // the image is still in containerd
		}
		if err := os.RemoveAll(dir); err != nil {
			return removed, err
		}
		removed = append(removed, dir)
	}
	return removed, nil
}

// manifestDigests is every manifest digest an image in containerd names:
// its target and, for an index, the manifests the index lists.
func (s *imageStore) manifestDigests(ctx context.Context) (map[string]bool, error) {
	ctx = nsCtx(ctx)
	l, err := s.images.List(ctx, &imagesapi.ListImagesRequest{})
	if err != nil {
		return nil, fmt.Errorf("listing containerd's images: %w", err)
	}
	known := map[string]bool{}
	for _, img := range l.GetImages() {
		t := img.GetTarget()
		known[t.GetDigest()] = true
		if !isIndex(t.GetMediaType()) {
			continue
		}
		b, err := s.readBlob(ctx, t.GetDigest(), maxManifestSize)
		if status.Code(err) == codes.NotFound {
			continue
		}
		if err != nil {
			return nil, err
		}
		idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
		if err != nil {
			continue // not resolvable, so no VM was made from it either
		}
		for _, m := range idx.Manifests {
			known[m.Digest.String()] = true
		}
	}
	return known, nil
}
