package vm

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// diskDir is where a containerDisk image keeps its files.
const diskDir = "disk"

// containerdNamespace is where containerd's CRI plugin keeps images.
const containerdNamespace = "k8s.io"

// maxManifestSize bounds the JSON documents read into memory.
const maxManifestSize = 4 << 20

// imageStore reads images from containerd's image and content services:
// the CRI image service put them there (pull secrets, policy, GC apply), and
// the disk is read from the same blobs, so there is one image store.
type imageStore struct {
	images  imagesapi.ImagesClient
	content contentapi.ContentClient
	cri     runtimeapi.ImageServiceClient
}

func newImageStore(conn *grpc.ClientConn, cri runtimeapi.ImageServiceClient) *imageStore {
	return &imageStore{images: imagesapi.NewImagesClient(conn), content: contentapi.NewContentClient(conn), cri: cri}
}

func nsCtx(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "containerd-namespace", containerdNamespace)
}

// manifest finds the image's manifest for this platform: containerd names
// the image by tag, by digest and (CRI-pulled) by its ID; the CRI's
// ImageStatus gives the names for whatever the kubelet passed.
func (s *imageStore) manifest(ctx context.Context, ref string) (v1.Hash, *v1.Manifest, error) {
	names := []string{ref}
	if st, err := s.cri.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err == nil && st.GetImage() != nil {
		names = append(names, st.GetImage().GetRepoTags()...)
		names = append(names, st.GetImage().GetRepoDigests()...)
	}
	ctx = nsCtx(ctx)
	for _, n := range names {
		img, err := s.images.Get(ctx, &imagesapi.GetImageRequest{Name: n})
		if status.Code(err) == codes.NotFound {
			continue
		}
		if err != nil {
			return v1.Hash{}, nil, fmt.Errorf("containerd image %s: %w", n, err)
		}
		t := img.GetImage().GetTarget()
		return s.resolve(ctx, t.GetMediaType(), t.GetDigest(), 0)
	}
	return v1.Hash{}, nil, status.Errorf(codes.NotFound, "image %s is not in containerd's image store", ref)
}

// isIndex says whether a media type is an OCI index or a Docker manifest list.
func isIndex(mediaType string) bool {
	return strings.Contains(mediaType, "index") || strings.Contains(mediaType, "manifest.list")
}

// resolve follows an index to the linux/amd64 manifest.
func (s *imageStore) resolve(ctx context.Context, mediaType, digest string, depth int) (v1.Hash, *v1.Manifest, error) {
	if depth > 2 {
		return v1.Hash{}, nil, errors.New("image index nested too deep")
	}
	b, err := s.readBlob(ctx, digest, maxManifestSize)
	if err != nil {
		return v1.Hash{}, nil, err
	}
	h, err := v1.NewHash(digest)
	if err != nil {
		return v1.Hash{}, nil, err
	}
	if isIndex(mediaType) {
		idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
		if err != nil {
			return v1.Hash{}, nil, fmt.Errorf("image index %s: %w", digest, err)
		}
		for _, m := range idx.Manifests {
			if m.Platform == nil || (m.Platform.OS == "linux" && m.Platform.Architecture == "amd64") {
				return s.resolve(ctx, string(m.MediaType), m.Digest.String(), depth+1)
			}
		}
		return v1.Hash{}, nil, fmt.Errorf("image index %s has no linux/amd64 manifest", digest)
	}
	m, err := v1.ParseManifest(bytes.NewReader(b))
	if err != nil {
		return v1.Hash{}, nil, fmt.Errorf("image manifest %s: %w", digest, err)
	}
	return h, m, nil
}

func (s *imageStore) readBlob(ctx context.Context, digest string, max int64) ([]byte, error) {
	r, err := s.blob(ctx, digest)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("blob %s is larger than %d bytes", digest, max)
	}
	return b, nil
}

// blob streams a blob from containerd's content store. The caller must
// Close it: that ends the gRPC stream, whether or not it was read to the
// end (a tar reader stops at the end-of-archive blocks; a bounded read
// stops at its bound).
func (s *imageStore) blob(ctx context.Context, digest string) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := s.content.Read(nsCtx(ctx), &contentapi.ReadContentRequest{Digest: digest})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("read blob %s: %w", digest, err)
	}
	return &blobReader{stream: stream, cancel: cancel, digest: digest}, nil
}

// blobReader reads a content stream's messages in the caller's goroutine:
// no goroutine is left blocked on a reader that stopped early.
type blobReader struct {
	stream contentapi.Content_ReadClient
	cancel context.CancelFunc
	digest string
	buf    []byte
	err    error
}

func (r *blobReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		resp, err := r.stream.Recv()
		switch {
		case err == io.EOF:
			r.err = io.EOF
		case err != nil:
			r.err = fmt.Errorf("read blob %s: %w", r.digest, err)
		default:
			r.buf = resp.GetData()
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (r *blobReader) Close() error {
	r.cancel()
	return nil
}

// extractDisk writes the image's /disk/* files into dir (which must not
// exist): the layers are applied in order, whiteouts included, and only
// regular files directly under /disk/ are kept. The files are made read
// only: the image's disk is a base that is never written.
func (s *imageStore) extractDisk(ctx context.Context, m *v1.Manifest, dir string) error {
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for _, l := range m.Layers {
		r, err := s.blob(ctx, l.Digest.String())
		if err != nil {
			return err
		}
		err = applyLayer(r, string(l.MediaType), tmp)
		r.Close()
		if err != nil {
			return fmt.Errorf("layer %s: %w", l.Digest, err)
		}
	}
	ents, _ := os.ReadDir(tmp)
	for _, e := range ents {
		os.Chmod(filepath.Join(tmp, e.Name()), 0o400)
	}
	return os.Rename(tmp, dir)
}

// applyLayer applies the disk/ part of one layer tarball to dir.
func applyLayer(r io.Reader, mediaType, dir string) error {
	if !strings.Contains(mediaType, "zstd") {
		br := bufioPeek(r)
		if gz, err := isGzip(br); err != nil {
			return err
		} else if gz {
			zr, err := gzip.NewReader(br)
			if err != nil {
				return err
			}
			defer zr.Close()
			r = zr
		} else {
			r = br
		}
	} else {
		return fmt.Errorf("zstd layers are not supported for VM disks")
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := path.Clean(strings.TrimPrefix(h.Name, "/"))
		d, base := path.Split(name)
		if path.Clean(d) != diskDir {
			if name == diskDir && strings.HasPrefix(base, ".wh.") {
				continue
			}
			if strings.HasSuffix(name, "/.wh..wh..opq") && path.Dir(name) == diskDir {
				clearDir(dir)
			}
			continue
		}
		switch {
		case base == ".wh..wh..opq":
			clearDir(dir)
		case strings.HasPrefix(base, ".wh."):
			os.Remove(filepath.Join(dir, strings.TrimPrefix(base, ".wh.")))
		case h.Typeflag == tar.TypeReg:
			if err := writeFile(filepath.Join(dir, base), tr); err != nil {
				return err
			}
		default:
			// Links and devices under /disk/ are not followed: a disk is a
			// plain file, and a link could name anything on the host.
			os.Remove(filepath.Join(dir, base))
		}
	}
}

func clearDir(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

// minFreeAfterExtract is the room an extraction leaves on the state
// file system: a tenant's image must not fill the device's /persist.
const minFreeAfterExtract = 512 << 20

// sparseBlock is the unit writeFile leaves as a hole when it is all zero.
const sparseBlock = 64 << 10

// writeFile writes r to a new file p, sparse: all-zero blocks become holes
// (a 2 GiB raw disk of a small image takes what its data takes, not 2
// GiB). It fails, before the file system fills, once less than
// minFreeAfterExtract would be left.
func writeFile(p string, r io.Reader) (err error) {
	os.Remove(p)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	buf := make([]byte, sparseBlock)
	var off, sinceCheck int64
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if !allZero(buf[:n]) {
				if sinceCheck == 0 {
					if err := checkFree(p, int64(len(buf))); err != nil {
						return err
					}
				}
				if _, err := f.WriteAt(buf[:n], off); err != nil {
					return err
				}
				sinceCheck += int64(n)
				if sinceCheck >= 64<<20 {
					sinceCheck = 0
				}
			}
			off += int64(n)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if err := f.Truncate(off); err != nil {
		return err
	}
	return f.Sync()
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// checkFree fails when writing next more bytes (and the next 64 MiB) at p
// would leave less than minFreeAfterExtract on its file system.
func checkFree(p string, next int64) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(filepath.Dir(p), &st); err != nil {
		return err
	}
	free := int64(st.Bavail) * st.Bsize
	if free-next-(64<<20) < minFreeAfterExtract {
		return fmt.Errorf("not enough room to extract the VM disk: %d MiB free on the state file system, and %d MiB must stay free", free>>20, minFreeAfterExtract>>20)
	}
	return nil
}

// bufioPeek returns a reader whose first bytes can be inspected.
func bufioPeek(r io.Reader) *peekBuf { return &peekBuf{r: r} }

type peekBuf struct {
	r    io.Reader
	head []byte
}

func (p *peekBuf) Read(b []byte) (int, error) {
	if len(p.head) > 0 {
		n := copy(b, p.head)
		p.head = p.head[n:]
		return n, nil
	}
	return p.r.Read(b)
}

func isGzip(p *peekBuf) (bool, error) {
	h := make([]byte, 2)
	n, err := io.ReadFull(p.r, h)
	p.head = h[:n]
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return false, err
	}
	return n == 2 && h[0] == 0x1f && h[1] == 0x8b, nil
}

// diskCache returns the directory with the image's /disk/ files, extracting
// them the first time. Keyed by manifest digest, so a re-tagged image is a
// new entry and the same image in two pods is extracted once.
//
// The extraction runs in the background, one per digest (no lock across
// images): a large disk outlives the kubelet's CreateContainer deadline,
// and the kubelet's retry joins the extraction still running instead of
// starting over; the caller's ctx only bounds its wait.
func (b *Backend) diskCache(ctx context.Context, ref string) (string, error) {
	h, m, err := b.images.manifest(ctx, ref)
	if err != nil {
		return "", err
	}
	dir := b.store.imageDir(h.Hex)
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	ch := b.extractions.DoChan(h.Hex, func() (any, error) {
		if _, err := os.Stat(dir); err == nil {
			return dir, nil // finished by an extraction that just ended
		}
		if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
			return "", err
		}
		b.imageMu.Lock()
		b.extracting.Store(h.Hex, struct{}{})
		b.imageMu.Unlock()
		defer b.extracting.Delete(h.Hex)
		// Not the caller's ctx: the extraction is shared and outlives it.
		if err := b.images.extractDisk(context.WithoutCancel(ctx), m, dir); err != nil {
			return "", fmt.Errorf("image %s: extracting /disk: %w", ref, err)
		}
		return dir, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return "", r.Err
		}
		return r.Val.(string), nil
	case <-ctx.Done():
		return "", status.Errorf(codes.Unavailable, "image %s: its VM disk is still being extracted (it goes on in the background; the kubelet's retry will use it): %v", ref, ctx.Err())
	}
}
