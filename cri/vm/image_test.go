package vm

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"google.golang.org/grpc"
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
	if err := s.extractDisk(context.Background(), m, dir); err != nil {
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
