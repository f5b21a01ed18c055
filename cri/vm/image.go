package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sirupsen/logrus"
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
		start := time.Now()
		st, err := b.images.extractDisk(context.WithoutCancel(ctx), m, dir)
		if err == nil {
			b.log.WithFields(logrus.Fields{"image": ref, "took": time.Since(start).Round(time.Millisecond), "written": st.Written}).Info("VM disk extracted")
		}
		if st.Resumed {
			b.log.WithFields(logrus.Fields{"image": ref, "layer": st.From.Layer, "entry": st.From.Entry, "offset": st.From.Offset,
				"kept": st.Kept, "written": st.Written, "repaired": st.Repaired}).Info("VM disk extraction resumed from a cut run")
		}
		if st.Repaired > 0 {
			b.log.WithField("image", ref).Warnf("the cut extraction's files differed from the image in %d bytes it had checkpointed: rewritten", st.Repaired)
		}
		if err != nil {
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
