package vm

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/lf-edge/evelet/internal/atomicfile"
)

// An extraction writes into <hex>.tmp/files and keeps its checkpoint in
// <hex>.tmp/progress.json; once every layer is applied, files/ is renamed
// to <hex>. An extraction cut by an agent restart is resumed, not started
// over: a gzip stream cannot be seeked, so the layers are read again from
// their start, but what the cut run wrote is compared with the stream
// instead of written again (reads instead of writes: the flash is not
// written twice, and the free-space reserve is not needed twice). The
// checkpoint only says which extraction the .tmp belongs to and how far
// it got: nothing in the .tmp is trusted, every block of it is compared
// with the image and rewritten where it differs.

const (
	tmpFilesDir  = "files"
	progressFile = "progress.json"
	// progressVersion changes when the .tmp layout does: a .tmp of
	// another version is started over.
	progressVersion = 1
)

// checkpointBytes is how much an extraction writes between two
// checkpoints (each one syncs the file being written first).
var checkpointBytes int64 = 64 << 20

// progress is an extraction's checkpoint: the image it extracts and the
// position in its layers up to which everything was written and synced.
type progress struct {
	Version  int      `json:"version"`
	Manifest string   `json:"manifest"` // the digest's hex, the entry's name
	Layers   []string `json:"layers"`   // the manifest's layer digests
	Layer    int      `json:"layer"`    // index in Layers
	Entry    int      `json:"entry"`    // tar entry index in that layer
	Offset   int64    `json:"offset"`   // bytes of that entry's file
}

// verifiedUpTo says up to which offset the cut run had written and synced
// the file of tar entry (layer, entry): all of it before the checkpoint's
// entry, the checkpoint's offset in it, nothing after (or without one).
func (p *progress) verifiedUpTo(layer, entry int) int64 {
	switch {
	case p == nil:
		return 0
	case layer < p.Layer || (layer == p.Layer && entry < p.Entry):
		return 1<<63 - 1
	case layer == p.Layer && entry == p.Entry:
		return p.Offset
	}
	return 0
}

// extractStats says what one extraction run did with the disk files.
type extractStats struct {
	Written  int64 // bytes written
	Kept     int64 // bytes a cut run had written, found equal to the image and kept
	Repaired int64 // bytes the cut run had written and checkpointed that differed from the image
	Resumed  bool  // a cut run's .tmp was resumed
	From     progress
}

// extraction is one run of extractDisk.
type extraction struct {
	files    string // <hex>.tmp/files
	progPath string
	cp       *progress       // the cut run's checkpoint; nil when starting afresh
	pos      progress        // where this run is
	unsynced int64           // bytes written since the last checkpoint
	made     map[string]bool // the files this run's layers made
	stats    extractStats
}

// extractDisk writes the image's /disk/* files into dir (which must not
// exist): the layers are applied in order, whiteouts included, and only
// regular files directly under /disk/ are kept. The files are made read
// only: the image's disk is a base that is never written. A <dir>.tmp a
// cut run left for the same manifest is resumed.
func (s *imageStore) extractDisk(ctx context.Context, m *v1.Manifest, dir string) (extractStats, error) {
	tmp := dir + ".tmp"
	x := &extraction{files: filepath.Join(tmp, tmpFilesDir), progPath: filepath.Join(tmp, progressFile), made: map[string]bool{}}
	x.pos = progress{Version: progressVersion, Manifest: filepath.Base(dir)}
	for _, l := range m.Layers {
		x.pos.Layers = append(x.pos.Layers, l.Digest.String())
	}
	x.cp = resumable(tmp, x.pos)
	if x.cp == nil {
		os.RemoveAll(tmp)
		if err := os.MkdirAll(x.files, 0o700); err != nil {
			return x.stats, err
		}
		if err := x.checkpoint(nil); err != nil {
			return x.stats, err
		}
	} else {
		x.stats.Resumed, x.stats.From = true, *x.cp
	}
	err := x.applyLayers(ctx, s, m)
	if err != nil {
		// A cancelled extraction is what an agent restart cuts: its .tmp
		// is kept for the next run. Any other failure (no room, a bad
		// layer) would fail again: its files go.
		if ctx.Err() == nil {
			os.RemoveAll(tmp)
		}
		return x.stats, err
	}
	ents, err := os.ReadDir(x.files)
	if err != nil {
		return x.stats, err
	}
	for _, e := range ents {
		p := filepath.Join(x.files, e.Name())
		if !x.made[e.Name()] || !e.Type().IsRegular() {
			// In the .tmp of the cut run but not the image's (a whiteout
			// the cut run had not reached, or not evelet's doing).
			if err := os.RemoveAll(p); err != nil {
				return x.stats, err
			}
			continue
		}
		os.Chmod(p, 0o400)
	}
	if err := os.Rename(x.files, dir); err != nil {
		return x.stats, err
	}
	return x.stats, os.RemoveAll(tmp)
}

// resumable returns the checkpoint of the .tmp at tmp when it is a cut
// extraction of the same manifest and layers, in this version's layout;
// nil otherwise.
func resumable(tmp string, want progress) *progress {
	for _, d := range []string{tmp, filepath.Join(tmp, tmpFilesDir)} {
		if st, err := os.Lstat(d); err != nil || !st.IsDir() {
			return nil
		}
	}
	b, err := os.ReadFile(filepath.Join(tmp, progressFile))
	if err != nil || len(b) > maxManifestSize {
		return nil
	}
	var p progress
	if json.Unmarshal(b, &p) != nil || p.Version != want.Version || p.Manifest != want.Manifest ||
		strings.Join(p.Layers, ",") != strings.Join(want.Layers, ",") || p.Layer < 0 || p.Layer > len(p.Layers) {
		return nil
	}
	return &p
}

// hasCheckpoint says whether tmp is a cut extraction of manifest hex
// that this version can resume.
func hasCheckpoint(tmp, hex string) bool {
	b, err := os.ReadFile(filepath.Join(tmp, progressFile))
	if err != nil || len(b) > maxManifestSize {
		return false
	}
	var p progress
	return json.Unmarshal(b, &p) == nil && p.Version == progressVersion && p.Manifest == hex
}

func (x *extraction) applyLayers(ctx context.Context, s *imageStore, m *v1.Manifest) error {
	for i, l := range m.Layers {
		x.pos.Layer, x.pos.Entry, x.pos.Offset = i, 0, 0
		r, err := s.blob(ctx, l.Digest.String())
		if err != nil {
			return err
		}
		err = x.applyLayer(r, string(l.MediaType))
		r.Close()
		if err != nil {
			return fmt.Errorf("layer %s: %w", l.Digest, err)
		}
		x.pos.Layer, x.pos.Entry, x.pos.Offset = i+1, 0, 0
		if x.cp == nil || x.cp.verifiedUpTo(i+1, 0) == 0 {
			if err := x.checkpoint(nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkpoint syncs f (the file being written) and records x.pos.
func (x *extraction) checkpoint(f *os.File) error {
	if f != nil {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	b, err := json.Marshal(x.pos)
	if err != nil {
		return err
	}
	x.unsynced = 0
	return atomicfile.WriteFile(x.progPath, b, 0o600)
}

// applyLayer applies the disk/ part of one layer tarball to dir, afresh.
func applyLayer(r io.Reader, mediaType, dir string) error {
	return (&extraction{files: dir}).applyLayer(r, mediaType)
}

// applyLayer applies the disk/ part of one layer tarball to x.files.
func (x *extraction) applyLayer(r io.Reader, mediaType string) error {
	if strings.Contains(mediaType, "zstd") {
		return fmt.Errorf("zstd layers are not supported for VM disks")
	}
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
	dir := x.files
	tr := tar.NewReader(r)
	for entry := 0; ; entry++ {
		x.pos.Entry, x.pos.Offset = entry, 0
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
			os.RemoveAll(filepath.Join(dir, strings.TrimPrefix(base, ".wh.")))
		case h.Typeflag == tar.TypeReg:
			if err := x.writeFile(filepath.Join(dir, base), tr); err != nil {
				return err
			}
		default:
			// Links and devices under /disk/ are not followed: a disk is a
			// plain file, and a link could name anything on the host.
			os.RemoveAll(filepath.Join(dir, base))
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
func writeFile(p string, r io.Reader) error {
	x := &extraction{}
	return x.writeFile(p, r)
}

// writeFile makes p's content r's. When a cut run left p, each block is
// compared with r and written only where it differs (a block of zeros
// that is not a hole is punched); a new p is written sparse. While
// writing, x checkpoints every checkpointBytes.
func (x *extraction) writeFile(p string, r io.Reader) (err error) {
	if x.made != nil {
		x.made[filepath.Base(p)] = true
	}
	var f *os.File
	var old int64 // the cut run's file's size; 0 for a new file
	verified := int64(0)
	if x.cp != nil {
		// Only a regular file is resumed: never follow what is in the .tmp.
		st, err := os.Lstat(p)
		if err == nil {
			// Something the cut run left: what differs from the image
			// before the checkpoint was changed after it was written.
			// (A missing file is a later layer's whiteout the cut run had
			// applied.)
			verified = x.cp.verifiedUpTo(x.pos.Layer, x.pos.Entry)
		}
		if err == nil && st.Mode().IsRegular() {
			f, err = os.OpenFile(p, os.O_RDWR|syscall.O_NOFOLLOW, 0)
			if err == nil {
				old = st.Size()
			}
		}
	}
	if f == nil {
		os.RemoveAll(p)
		if f, err = os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err != nil {
			return err
		}
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	buf := make([]byte, sparseBlock)
	cur := make([]byte, sparseBlock)
	var off, sinceCheck int64
	write := func(b []byte) error {
		if sinceCheck == 0 {
			if err := checkFree(p, int64(len(buf))); err != nil {
				return err
			}
		}
		if _, err := f.WriteAt(b, off); err != nil {
			return err
		}
		x.stats.Written += int64(len(b))
		x.unsynced += int64(len(b))
		if sinceCheck += int64(len(b)); sinceCheck >= 64<<20 {
			sinceCheck = 0
		}
		return nil
	}
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			b := buf[:n]
			zero := allZero(b)
			if off < old {
				// What the cut run left: keep it where it is the image's.
				m, _ := f.ReadAt(cur[:n], off)
				if m == n && bytes.Equal(cur[:n], b) {
					x.stats.Kept += int64(n)
				} else {
					if off < verified {
						x.stats.Repaired += int64(n)
					}
					if zero && m == n {
						err = punchHole(f, off, int64(n))
					} else {
						err = write(b)
					}
					if err != nil {
						return err
					}
				}
			} else if !zero {
				if off < verified {
					x.stats.Repaired += int64(n) // cut short before its checkpoint
				}
				if err := write(b); err != nil {
					return err
				}
			}
			off += int64(n)
			x.pos.Offset = off
			if x.progPath != "" && x.unsynced >= checkpointBytes {
				if err := x.checkpoint(f); err != nil {
					return err
				}
			}
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

// punchHole makes n bytes at off a hole (they read as zeros); where the
// file system cannot, it writes the zeros.
func punchHole(f *os.File, off, n int64) error {
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		_, err = f.WriteAt(make([]byte, n), off)
	}
	return err
}

var zeroBlock [sparseBlock]byte

func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), sparseBlock)
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
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
