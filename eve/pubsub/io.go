package pubsub

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/lf-edge/evelet/internal/atomicfile"
)

// maxFileSize bounds what we read: EVE's own pubsub limit is 10 MiB.
const maxFileSize = 10 << 20

// Decode decodes one pubsub file's content. path is only used in errors.
// Unknown fields are ignored; malformed JSON, a known field of the wrong
// type, or a failed Validate (for types that have one) give a *FileError.
func Decode[T any](path string, data []byte) (T, error) {
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		var zero T
		return zero, decodeError[T](path, data, err)
	}
	if val, ok := any(&v).(Validator); ok {
		if err := val.Validate(); err != nil {
			fe := &FileError{Path: path, Offset: -1, Err: err}
			var fld *FieldError
			if errors.As(err, &fld) {
				fe.Field = fld.Field
			}
			var zero T
			return zero, fe
		}
	}
	return v, nil
}

// decodeError turns an encoding/json error into a FileError that names the
// field (or the byte offset for syntax errors).
func decodeError[T any](path string, data []byte, err error) error {
	var syn *json.SyntaxError
	if errors.As(err, &syn) {
		return &FileError{Path: path, Offset: syn.Offset, Err: err}
	}
	fe := &FileError{Path: path, Offset: -1, Err: err}
	top := failingTopLevelKey[T](data)
	var ute *json.UnmarshalTypeError
	if errors.As(err, &ute) {
		fe.Offset = ute.Offset
		fe.Field = ute.Field
	}
	// Errors from text unmarshallers (net.IP) and from nested
	// UnmarshalJSON methods carry no field, or a field relative to the
	// nested value: anchor them at the top-level key that fails.
	switch {
	case top == "":
	case fe.Field == "":
		fe.Field = top
	case fe.Field != top && !strings.HasPrefix(fe.Field, top+"."):
		fe.Field = top + "." + fe.Field
	}
	if fe.Field != "" {
		fe.Offset = -1
	}
	return fe
}

// failingTopLevelKey finds the first top-level key (in file order) whose
// value alone does not decode into a T. It returns "" if data is not an
// object or no single key fails.
func failingTopLevelKey[T any](data []byte) string {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return ""
		}
		key, _ := kt.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return ""
		}
		one, err := json.Marshal(map[string]json.RawMessage{key: raw})
		if err != nil {
			return ""
		}
		var v T
		if json.Unmarshal(one, &v) != nil {
			return key
		}
	}
	return ""
}

// Read reads and decodes one pubsub file. A missing file is (zero, false,
// nil); an unusable one is (zero, true, *FileError).
func Read[T any](path string) (T, bool, error) {
	var zero T
	data, err := readFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return zero, false, nil
	}
	if err != nil {
		return zero, true, &FileError{Path: path, Offset: -1, Err: err}
	}
	v, err := Decode[T](path, data)
	return v, true, err
}

// ReadFirst reads the first of paths that exists (for topics EVE may
// publish either under /run or, persistent, under /persist/status). It
// returns the path used, or "" if none exists.
func ReadFirst[T any](paths ...string) (T, string, error) {
	for _, p := range paths {
		v, ok, err := Read[T](p)
		if ok {
			return v, p, err
		}
	}
	var zero T
	return zero, "", nil
}

// ReadAll reads every <key>.json in a per-key topic directory into a map by
// key. A missing directory is an empty map. Files that do not decode are
// left out and reported together in the error (each a *FileError).
func ReadAll[T any](dir string) (map[string]T, error) {
	out := map[string]T{}
	keys, err := listKeys(dir)
	if err != nil {
		return out, err
	}
	var errs []error
	for _, k := range keys {
		v, ok, err := Read[T](keyFile(dir, k))
		switch {
		case err != nil:
			errs = append(errs, err)
		case ok:
			out[k] = v
		}
	}
	return out, errors.Join(errs...)
}

// listKeys lists the keys of a topic directory: names ending in ".json",
// not starting with "." (temp files of writers). Sorted.
func listKeys(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, &FileError{Path: dir, Offset: -1, Err: err}
	}
	var keys []string
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") {
			continue
		}
		keys = append(keys, strings.TrimSuffix(name, ".json"))
	}
	sort.Strings(keys)
	return keys, nil
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return nil, fmt.Errorf("is a directory")
	}
	if st.Size() > maxFileSize {
		return nil, fmt.Errorf("file is %d bytes, more than the %d allowed", st.Size(), maxFileSize)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Write writes v at path the way EVE's pubsub writes its files: compact
// encoding/json output, written to a temp file in the same directory and
// renamed over path, mode 0600 (missing directories are created 0700).
// Write does not validate: the simulator may publish whatever zedagent
// could. It writes the file only: what evelet publishes for EVE's agents
// must also be served on the topic's socket, which package socketpub does.
func Write[T any](path string, v T) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("eve pubsub file %s: encode: %w", path, err)
	}
	return atomicfile.WriteFile(path, data, 0o600)
}

// Unpublish removes a key's file, as EVE's Unpublish does. A missing file
// is not an error.
func Unpublish(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// topicKey is the key of a file path: its base name without ".json".
func topicKey(path string) string {
	return strings.TrimSuffix(filepath.Base(path), ".json")
}
