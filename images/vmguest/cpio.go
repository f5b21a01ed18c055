package vmguest

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"path"
	"sort"
)

// cpioEntry is one member of the initramfs.
type cpioEntry struct {
	path   string // absolute path in the guest
	mode   uint32 // file type and permission bits (S_IF* | perm)
	data   []byte // regular file content, or symlink target
	rdevMj uint32 // character devices
	rdevMn uint32
}

const (
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
	sIFCHR = 0o020000
)

// newcArchive writes entries as a gzip-compressed "newc" cpio archive, the
// format the kernel unpacks into its initramfs (see the kernel's
// Documentation/driver-api/early-userspace/buffer-format.rst). It is
// written here rather than with the cpio tool so that the archive is the
// same bytes on every build (fixed inode numbers, owners and times) and
// can hold /dev/console without a mknod on the build machine (which would
// need root). GNU cpio reads it back (the tests check).
func newcArchive(entries []cpioEntry) ([]byte, error) {
	sorted := append([]cpioEntry(nil), entries...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].path < sorted[j].path })
	var raw bytes.Buffer
	seen := map[string]bool{}
	ino := uint32(1)
	for _, e := range sorted {
		name := path.Clean(e.path)
		if !path.IsAbs(name) || name == "/" {
			return nil, fmt.Errorf("vmguest: bad initramfs path %q", e.path)
		}
		if seen[name] {
			return nil, fmt.Errorf("vmguest: duplicate initramfs path %q", name)
		}
		seen[name] = true
		if parent := path.Dir(name); parent != "/" && !seen[parent] {
			return nil, fmt.Errorf("vmguest: %q listed without its parent directory %q", name, parent)
		}
		nlink := uint32(1)
		if e.mode&0o170000 == sIFDIR {
			nlink = 2
		}
		writeNewc(&raw, name[1:], ino, e.mode, nlink, e.data, e.rdevMj, e.rdevMn)
		ino++
	}
	writeNewc(&raw, "TRAILER!!!", 0, 0, 1, nil, 0, 0)
	var out bytes.Buffer
	zw, err := gzip.NewWriterLevel(&out, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func writeNewc(b *bytes.Buffer, name string, ino, mode, nlink uint32, data []byte, rmj, rmn uint32) {
	// magic, then 13 eight-digit hex fields: ino mode uid gid nlink mtime
	// filesize devmajor devminor rdevmajor rdevminor namesize check.
	fmt.Fprintf(b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmj, rmn, len(name)+1, 0)
	b.WriteString(name)
	b.WriteByte(0)
	pad4(b)
	b.Write(data)
	pad4(b)
}

func pad4(b *bytes.Buffer) {
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
}
