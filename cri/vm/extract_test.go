package vm

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"google.golang.org/grpc"
)

// cutContent serves blobs as fakeContent does, and cancels the extraction
// once cutAfter bytes of the blob cut were sent: an agent restart at a
// known point.
type cutContent struct {
	*fakeContent
	cut      string
	cutAfter int
	cancel   context.CancelFunc
}

func (c *cutContent) Read(ctx context.Context, in *contentapi.ReadContentRequest, o ...grpc.CallOption) (contentapi.Content_ReadClient, error) {
	s, err := c.fakeContent.Read(ctx, in, o...)
	if err != nil || in.Digest != c.cut {
		return s, err
	}
	return &cutStream{Content_ReadClient: s, left: c.cutAfter, cancel: c.cancel}, nil
}

type cutStream struct {
	contentapi.Content_ReadClient
	left   int
	cancel context.CancelFunc
}

func (s *cutStream) Recv() (*contentapi.ReadContentResponse, error) {
	if s.left <= 0 {
		s.cancel()
	}
	r, err := s.Content_ReadClient.Recv()
	if err == nil {
		s.left -= len(r.Data)
	}
	return r, err
}

// resumeImage is a two-layer containerDisk: an uncompressed layer with
// disk/a.raw and disk/x.raw, and a gzip layer that whites x.raw out and
// adds disk/boot.raw (4 MiB of data, 4 MiB of zeros, 4 MiB of data).
// Random data does not compress: the gzip stream's offset is about the
// file's.
func resumeImage(t *testing.T) (m *v1.Manifest, blobs map[string][]byte, want map[string][]byte, bootLayer string) {
	rng := rand.NewChaCha8([32]byte{1})
	data := func(n int) []byte { b := make([]byte, n); rng.Read(b); return b }
	a := data(3 << 20)
	boot := append(append(data(4<<20), make([]byte, 4<<20)...), data(4<<20)...)
	layer := func(gz bool, files ...any) []byte {
		var buf bytes.Buffer
		var w interface {
			Write([]byte) (int, error)
			Close() error
		} = nopCloser{&buf}
		if gz {
			w, _ = gzip.NewWriterLevel(&buf, gzip.BestSpeed)
		}
		tw := tar.NewWriter(w)
		tw.WriteHeader(&tar.Header{Name: "disk/", Typeflag: tar.TypeDir, Mode: 0o755})
		for i := 0; i < len(files); i += 2 {
			b := files[i+1].([]byte)
			tw.WriteHeader(&tar.Header{Name: files[i].(string), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b))})
			tw.Write(b)
		}
		tw.Close()
		w.Close()
		return buf.Bytes()
	}
	l1 := layer(false, "disk/a.raw", a, "disk/x.raw", []byte("x"))
	l2 := layer(true, "disk/.wh.x.raw", []byte{}, "disk/boot.raw", boot)
	blobs = map[string][]byte{}
	m = &v1.Manifest{}
	for i, l := range [][]byte{l1, l2} {
		h, _ := v1.NewHash("sha256:" + strings.Repeat(string(rune('1'+i)), 64))
		blobs[h.String()] = l
		mt := types.OCIUncompressedLayer
		if i == 1 {
			mt = types.OCILayer
		}
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: mt, Digest: h, Size: int64(len(l))})
	}
	return m, blobs, map[string][]byte{"a.raw": a, "boot.raw": boot}, m.Layers[1].Digest.String()
}

type nopCloser struct{ *bytes.Buffer }

func (nopCloser) Close() error { return nil }

func checkExtracted(t *testing.T, dir string, want map[string][]byte) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != len(want) {
		t.Errorf("extracted %d files, want %d", len(ents), len(want))
	}
	for name, w := range want {
		st, err := os.Lstat(filepath.Join(dir, name))
		if err != nil || !st.Mode().IsRegular() {
			t.Errorf("%s: %v, %v", name, st, err)
			continue
		}
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !bytes.Equal(got, w) {
			t.Errorf("%s: %d bytes differ from the image's %d (%v)", name, len(got), len(w), err)
		}
	}
	if _, err := os.Stat(dir + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("%s.tmp left after the extraction: %v", dir, err)
	}
}

// cutExtraction runs an extraction of m into dir that an agent restart
// cuts after about cutAfter bytes of the boot layer, and returns the
// checkpoint it left.
func cutExtraction(t *testing.T, m *v1.Manifest, blobs map[string][]byte, bootLayer, dir string, cutAfter int) progress {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fc := &fakeContent{blobs: blobs}
	s := &imageStore{content: &cutContent{fakeContent: fc, cut: bootLayer, cutAfter: cutAfter, cancel: cancel}}
	if _, err := s.extractDisk(ctx, m, dir); err == nil || !errors.Is(ctx.Err(), context.Canceled) {
		t.Fatalf("cut extraction: %v, want it cancelled", err)
	}
	// The layer reader ended each layer's stream, the cut one included
	// (the leak of issue 21 item 12 must not come back on this path).
	for i, sctx := range fc.ctxs {
		if sctx.Err() == nil {
			t.Errorf("content stream %d still open after the cut extraction", i)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir+".tmp", progressFile))
	if err != nil {
		t.Fatalf("the cut extraction left no checkpoint: %v", err)
	}
	var p progress
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	if p.Layer != 1 || p.Offset == 0 {
		t.Fatalf("checkpoint %+v, want inside boot.raw in layer 1", p)
	}
	return p
}

func withCheckpointBytes(t *testing.T, n int64) {
	old := checkpointBytes
	checkpointBytes = n
	t.Cleanup(func() { checkpointBytes = old })
}

// TestExtractionResumes: an extraction cut by an agent restart (issue 21
// item 12) is resumed by the next one: the result is the image's, and
// what the cut run had written and checkpointed is read and compared, not
// written again.
func TestExtractionResumes(t *testing.T) {
	withCheckpointBytes(t, 1<<20)
	m, blobs, want, bootLayer := resumeImage(t)
	root := t.TempDir()

	// The same image extracted in one go: what a run writes.
	fresh, err := (&imageStore{content: &fakeContent{blobs: blobs}}).extractDisk(context.Background(), m, filepath.Join(root, "fresh"))
	if err != nil {
		t.Fatal(err)
	}
	checkExtracted(t, filepath.Join(root, "fresh"), want)
	if fresh.Resumed || fresh.Written != 11<<20+1 {
		t.Fatalf("a fresh extraction wrote %d bytes (resumed %v), want the 11 MiB of data", fresh.Written, fresh.Resumed)
	}

	dir := filepath.Join(root, "cut")
	cp := cutExtraction(t, m, blobs, bootLayer, dir, 7<<20)
	// Written and synced before the cut: a.raw and boot.raw's data up to
	// the checkpoint (its zeros are holes).
	synced := int64(3<<20) + min(cp.Offset, 4<<20) + max(0, cp.Offset-8<<20)
	if cp.Offset < 8<<20 {
		t.Fatalf("checkpoint at %d of boot.raw, want past its zeros (8 MiB)", cp.Offset)
	}
	st, err := (&imageStore{content: &fakeContent{blobs: blobs}}).extractDisk(context.Background(), m, dir)
	if err != nil {
		t.Fatal(err)
	}
	checkExtracted(t, dir, want)
	t.Logf("checkpoint %+v; resumed run: %+v", cp, st)
	if !st.Resumed || st.Repaired != 0 {
		t.Errorf("resumed %v, repaired %d bytes: want a resume with nothing to repair", st.Resumed, st.Repaired)
	}
	if st.Kept < synced {
		t.Errorf("the resumed run kept %d bytes of the cut run's, want at least the %d it had synced", st.Kept, synced)
	}
	if st.Written > fresh.Written-synced {
		t.Errorf("the resumed run wrote %d bytes, want at most %d (a fresh run's %d less the %d the cut run had synced)", st.Written, fresh.Written-synced, fresh.Written, synced)
	}
}

// TestExtractionResumeTrustsNothing: a cut extraction's .tmp whose files
// were changed (a flipped byte and data in a hole before the checkpoint,
// a truncated file, a file replaced by a symlink to a host file, a file
// the image does not have) is repaired from the image by the resumed run,
// never used as it is, and the link is not followed.
func TestExtractionResumeTrustsNothing(t *testing.T) {
	withCheckpointBytes(t, 1<<20)
	m, blobs, want, bootLayer := resumeImage(t)
	root := t.TempDir()
	dir := filepath.Join(root, "img")
	cutExtraction(t, m, blobs, bootLayer, dir, 7<<20)
	files := filepath.Join(dir+".tmp", tmpFilesDir)

	host := filepath.Join(root, "host-file")
	if err := os.WriteFile(host, []byte("the owner's"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(files, "a.raw"))
	if err := os.Symlink(host, filepath.Join(files, "a.raw")); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(files, "boot.raw"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{^want["boot.raw"][100]}, 100) // a flipped byte
	f.WriteAt([]byte("not zeros"), 5<<20)          // data in the zeros
	f.Close()
	os.WriteFile(filepath.Join(files, "extra.raw"), []byte("not in the image"), 0o600)

	st, err := (&imageStore{content: &fakeContent{blobs: blobs}}).extractDisk(context.Background(), m, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("resumed run: %+v", st)
	if got, _ := os.ReadFile(host); string(got) != "the owner's" {
		t.Errorf("the host file behind the link was written: %q", got)
	}
	// Repaired: the two changed blocks and a.raw (3 MiB) behind the link.
	if !st.Resumed || st.Repaired != 2*sparseBlock+3<<20 {
		t.Errorf("resumed %v, repaired %d bytes, want the two changed 64 KiB blocks and a.raw", st.Resumed, st.Repaired)
	}
	delete(want, "extra.raw")
	checkExtracted(t, dir, want)

	// A truncated file: written again from where it ends.
	dir2 := filepath.Join(root, "img2")
	cutExtraction(t, m, blobs, bootLayer, dir2, 7<<20)
	os.Truncate(filepath.Join(dir2+".tmp", tmpFilesDir, "boot.raw"), 1<<20)
	st, err = (&imageStore{content: &fakeContent{blobs: blobs}}).extractDisk(context.Background(), m, dir2)
	if err != nil {
		t.Fatal(err)
	}
	checkExtracted(t, dir2, want)
	if st.Repaired == 0 {
		t.Errorf("a truncated file was not repaired: %+v", st)
	}

	// A checkpoint of another layer list (another image at that name):
	// started over.
	dir3 := filepath.Join(root, "img3")
	cp := cutExtraction(t, m, blobs, bootLayer, dir3, 7<<20)
	cp.Layers[0] = "sha256:" + strings.Repeat("9", 64)
	b, _ := json.Marshal(cp)
	os.WriteFile(filepath.Join(dir3+".tmp", progressFile), b, 0o600)
	st, err = (&imageStore{content: &fakeContent{blobs: blobs}}).extractDisk(context.Background(), m, dir3)
	if err != nil {
		t.Fatal(err)
	}
	checkExtracted(t, dir3, want)
	if st.Resumed || st.Kept != 0 {
		t.Errorf("the .tmp of another layer list was resumed: %+v", st)
	}
}
