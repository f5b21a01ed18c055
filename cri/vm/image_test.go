package vm

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fakeContent is containerd's content service serving blobs from memory,
// in 32 KiB messages as containerd does; it remembers each stream's
// context to tell whether the reader ended it.
type fakeContent struct {
	contentapi.ContentClient
	blobs map[string][]byte
	mu    sync.Mutex
	ctxs  []context.Context
}

func (f *fakeContent) Read(ctx context.Context, in *contentapi.ReadContentRequest, _ ...grpc.CallOption) (contentapi.Content_ReadClient, error) {
	f.mu.Lock()
	f.ctxs = append(f.ctxs, ctx)
	f.mu.Unlock()
	return &fakeStream{ctx: ctx, data: f.blobs[in.Digest]}, nil
}

type fakeStream struct {
	grpc.ClientStream
	ctx  context.Context
	data []byte
}

func (s *fakeStream) Context() context.Context { return s.ctx }

func (s *fakeStream) Recv() (*contentapi.ReadContentResponse, error) {
	if err := s.ctx.Err(); err != nil {
		return nil, err
	}
	if len(s.data) == 0 {
		return nil, io.EOF
	}
	n := min(len(s.data), 32<<10)
	r := &contentapi.ReadContentResponse{Data: s.data[:n]}
	s.data = s.data[n:]
	return r, nil
}

// TestExtractEndsEveryStream: extracting a layer whose tarball goes on
// past the end-of-archive blocks (tar's record padding) ends the content
// stream instead of leaving it and a goroutine blocked forever (issue 21
// item 12: the layer reader leaked one per layer).
func TestExtractEndsEveryStream(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "disk/", Typeflag: tar.TypeDir, Mode: 0o755})
	disk := bootSector("x", true)
	tw.WriteHeader(&tar.Header{Name: "disk/boot.raw", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(disk))})
	tw.Write(disk)
	tw.Close()
	buf.Write(make([]byte, 256<<10)) // padding after the archive's end, as tar(1) writes records
	digest := "sha256:" + string(bytes.Repeat([]byte("a"), 64))
	fc := &fakeContent{blobs: map[string][]byte{digest: buf.Bytes()}}
	s := &imageStore{content: fc}
	h, _ := v1.NewHash(digest)
	m := &v1.Manifest{Layers: []v1.Descriptor{{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: h}}}
	dir := filepath.Join(t.TempDir(), "img")
	if _, err := s.extractDisk(context.Background(), m, dir); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "boot.raw")); err != nil || !bytes.Equal(b, disk) {
		t.Fatalf("extracted disk: %d bytes, %v", len(b), err)
	}
	fc.mu.Lock()
	for i, ctx := range fc.ctxs {
		if ctx.Err() == nil {
			t.Errorf("content stream %d is still open after the extraction", i)
		}
	}
	fc.mu.Unlock()
	// A bounded read that stops early ends its stream too.
	if _, err := s.readBlob(context.Background(), digest, 1024); err == nil {
		t.Error("readBlob past its bound succeeded")
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if last := fc.ctxs[len(fc.ctxs)-1]; last.Err() == nil {
		t.Error("the stream of a bounded read that stopped early is still open")
	}
}

// TestExtractIsSparse: a raw disk that is mostly zeros (the 2 MB image
// holding a 2 GiB disk of issue 21 item 9) is extracted as a sparse file:
// its size is the disk's, what it takes on the device is its data.
func TestExtractIsSparse(t *testing.T) {
	const size = 256 << 20
	data := bootSector("sparse", true) // 1 MiB, its first sector code
	p := filepath.Join(t.TempDir(), "disk.raw")
	if err := writeFile(p, io.MultiReader(bytes.NewReader(data), io.LimitReader(zeros{}, size-int64(len(data))))); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size {
		t.Errorf("size %d, want %d", st.Size, size)
	}
	if used := st.Blocks * 512; used > 2<<20 {
		t.Errorf("the mostly-zero disk takes %d MiB on the file system, want at most its 2 MiB of data", used>>20)
	}
	got, _ := os.ReadFile(p)
	if !bytes.Equal(got[:len(data)], data) || !allZero(got[len(data):]) {
		t.Error("the sparse copy differs from the disk")
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

type fakeImages struct {
	imagesapi.ImagesClient
	target *types.Descriptor
}

func (f fakeImages) Get(context.Context, *imagesapi.GetImageRequest, ...grpc.CallOption) (*imagesapi.GetImageResponse, error) {
	return &imagesapi.GetImageResponse{Image: &imagesapi.Image{Name: "disk:1", Target: f.target}}, nil
}

type noImageStatus struct{ runtimeapi.ImageServiceClient }

func (noImageStatus) ImageStatus(context.Context, *runtimeapi.ImageStatusRequest, ...grpc.CallOption) (*runtimeapi.ImageStatusResponse, error) {
	return nil, errors.New("not asked here")
}

// gatedContent holds the layer's stream until gate is closed.
type gatedContent struct {
	*fakeContent
	layer string
	gate  chan struct{}
	reads atomic.Int32
}

func (g *gatedContent) Read(ctx context.Context, in *contentapi.ReadContentRequest, o ...grpc.CallOption) (contentapi.Content_ReadClient, error) {
	if in.Digest == g.layer {
		g.reads.Add(1)
		select {
		case <-g.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return g.fakeContent.Read(ctx, in, o...)
}

// TestExtractionOutlivesTheCall: a CreateContainer whose deadline ends
// while its disk is extracted gets Unavailable, the extraction goes on,
// and the kubelet's retry uses it: the layer is read once (issue 21 item
// 12: a large disk never finished within the kubelet's deadline, and
// every retry started over).
func TestExtractionOutlivesTheCall(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	disk := bootSector("bg", true)
	tw.WriteHeader(&tar.Header{Name: "disk/boot.raw", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(disk))})
	tw.Write(disk)
	tw.Close()
	layer := "sha256:" + strings.Repeat("b", 64)
	m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%d}]}`,
		strings.Repeat("c", 64), layer, buf.Len())
	manifest := "sha256:" + strings.Repeat("d", 64)
	gc := &gatedContent{fakeContent: &fakeContent{blobs: map[string][]byte{layer: buf.Bytes(), manifest: []byte(m)}}, layer: layer, gate: make(chan struct{})}
	b := lightBackend(t, slowSupervisor(0))
	b.images = &imageStore{content: gc, images: fakeImages{target: &types.Descriptor{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: manifest}}, cri: noImageStatus{}}

	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := b.diskCache(short, "disk:1")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "still being extracted") {
		t.Fatalf("disk not extracted within the call's deadline: %v, want Unavailable", err)
	}
	close(gc.gate)
	dir, err := b.diskCache(context.Background(), "disk:1")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "boot.raw")); err != nil || !bytes.Equal(got, disk) {
		t.Errorf("extracted disk %d bytes, %v", len(got), err)
	}
	if n := gc.reads.Load(); n != 1 {
		t.Errorf("the layer was read %d times, want once: the retry must join the extraction", n)
	}
}
