package images

import (
	"archive/tar"
	"bytes"
	"fmt"
	"path"
	"sort"
)

// entry is one file system object of a layer.
type entry struct {
	path   string // absolute path inside the image
	mode   int64  // permission bits (and sticky bit)
	kind   byte   // tar.TypeReg, tar.TypeDir or tar.TypeSymlink
	data   []byte // TypeReg
	target string // TypeSymlink
}

func dir(p string, mode int64) entry { return entry{path: p, mode: mode, kind: tar.TypeDir} }

func file(p string, mode int64, data []byte) entry {
	return entry{path: p, mode: mode, kind: tar.TypeReg, data: data}
}

func symlink(p, target string) entry {
	return entry{path: p, mode: 0o777, kind: tar.TypeSymlink, target: target}
}

// layerTar writes entries as an uncompressed tar, sorted by path, owned by
// root, with every timestamp at the epoch: the same entries always give the
// same bytes. Parent directories must be listed before their children; the
// sort guarantees it for explicitly listed directories.
func layerTar(entries []entry) ([]byte, error) {
	sorted := append([]entry(nil), entries...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].path < sorted[j].path })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	seen := map[string]bool{}
	for _, e := range sorted {
		name := path.Clean(e.path)
		if !path.IsAbs(name) || name == "/" {
			return nil, fmt.Errorf("images: bad layer path %q", e.path)
		}
		if seen[name] {
			return nil, fmt.Errorf("images: duplicate layer path %q", name)
		}
		seen[name] = true
		if parent := path.Dir(name); parent != "/" && !seen[parent] {
			return nil, fmt.Errorf("images: %q listed without its parent directory %q", name, parent)
		}
		hdr := &tar.Header{
			Name:     name[1:], // tar members are relative
			Mode:     e.mode,
			Typeflag: e.kind,
			ModTime:  epoch,
			Format:   tar.FormatUSTAR,
		}
		switch e.kind {
		case tar.TypeDir:
			hdr.Name += "/"
		case tar.TypeReg:
			hdr.Size = int64(len(e.data))
		case tar.TypeSymlink:
			hdr.Linkname = e.target
		default:
			return nil, fmt.Errorf("images: unsupported entry type %q for %q", e.kind, name)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("images: tar %s: %w", name, err)
		}
		if e.kind == tar.TypeReg {
			if _, err := tw.Write(e.data); err != nil {
				return nil, fmt.Errorf("images: tar %s: %w", name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("images: tar: %w", err)
	}
	return buf.Bytes(), nil
}
