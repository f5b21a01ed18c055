// Package tenantjson holds the checks every piece of tenant-written JSON
// (a NAD's spec.config, a pod's networks annotation, eve-ni's stdin) goes
// through before evelet reads it.
//
// Go's encoding/json matches object keys to struct fields without regard
// to letter case, and the last of two matching keys wins. So a check that
// looks for the exact key "eveniConfig" misses "eveniconfig", which Go
// then decodes into the same field. Key comparisons here fold case the
// way encoding/json does (Unicode simple folding, as bytes.EqualFold), and
// a document with two keys that fold alike in one object is refused.
package tenantjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Fold returns the form of key that encoding/json compares: two keys with
// the same Fold match the same struct field.
func Fold(key string) string {
	var b strings.Builder
	for _, r := range key {
		min := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			if f < min {
				min = f
			}
		}
		b.WriteRune(min)
	}
	return b.String()
}

// EqualKey says whether encoding/json treats a and b as the same key.
func EqualKey(a, b string) bool { return Fold(a) == Fold(b) }

// CheckKeys refuses a document in which one object has two keys that
// encoding/json would treat as one (in any letter case), naming the
// object's path and both keys. It also refuses invalid JSON and trailing
// data.
func CheckKeys(raw []byte) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := walk(dec, "$"); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

func walk(dec *json.Decoder, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("not valid JSON: %v", err)
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '{':
		seen := map[string]string{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return fmt.Errorf("not valid JSON: %v", err)
			}
			k, _ := kt.(string)
			if !utf8.ValidString(k) {
				return fmt.Errorf("%s: a key is not valid UTF-8", path)
			}
			f := Fold(k)
			if prev, dup := seen[f]; dup {
				return fmt.Errorf("%s: keys %q and %q are the same key to the plugins (JSON keys match in any letter case); use one", path, prev, k)
			}
			seen[f] = k
			if err := walk(dec, path+"."+k); err != nil {
				return err
			}
		}
	case '[':
		for i := 0; dec.More(); i++ {
			if err := walk(dec, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	if _, err := dec.Token(); err != nil { // the closing delimiter
		return fmt.Errorf("not valid JSON: %v", err)
	}
	return nil
}

// Get returns m's value for key in any letter case.
func Get(m map[string]any, key string) (any, bool) {
	if v, ok := m[key]; ok {
		return v, true
	}
	f := Fold(key)
	for k, v := range m {
		if Fold(k) == f {
			return v, true
		}
	}
	return nil, false
}

// Delete removes key from m in every letter case.
func Delete(m map[string]any, key string) {
	f := Fold(key)
	for k := range m {
		if Fold(k) == f {
			delete(m, k)
		}
	}
}

// Set replaces key in m in every letter case with v under exactly key.
func Set(m map[string]any, key string, v any) {
	Delete(m, key)
	m[key] = v
}

// PathProblem says why s, the value at key, must not come from a tenant,
// "" if it may: an absolute path names a host file or socket; a relative
// one with a ".." element climbs out of wherever it is resolved, and any
// relative path resolves against the plugin's working directory, which is
// the host's. Values of keys that name a path (…Path, …Dir, …File,
// …Socket, …Config, kubeconfig) are refused whatever their form.
func PathProblem(key, s string) string {
	if s == "" {
		return ""
	}
	if strings.HasPrefix(s, "/") {
		return "is an absolute path"
	}
	for _, el := range strings.Split(s, "/") {
		if el == ".." {
			return "is a relative path that climbs with \"..\""
		}
	}
	if strings.HasPrefix(s, "./") || strings.HasPrefix(s, "~") {
		return "is a relative path"
	}
	if PathKey(key) {
		return "names a file, directory or socket (a relative path resolves against the plugin's working directory on the host)"
	}
	return ""
}

// PathKey says whether a key's name says its value is a path.
func PathKey(key string) bool {
	k := strings.ToLower(key)
	for _, suf := range []string{"path", "dir", "file", "socket", "config", "kubeconfig", "directory"} {
		if strings.HasSuffix(k, suf) {
			return true
		}
	}
	return false
}

// FindPath returns the dotted key and problem of the first string in v
// (a decoded JSON document) that PathProblem refuses, "" if none.
func FindPath(v any) (key, problem string) {
	return findPath(v, "", "")
}

func findPath(v any, path, key string) (string, string) {
	switch x := v.(type) {
	case string:
		if p := PathProblem(key, x); p != "" {
			return path, p
		}
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if r, p := findPath(x[k], strings.TrimPrefix(path+"."+k, "."), k); r != "" {
				return r, p
			}
		}
	case []any:
		for i, e := range x {
			if r, p := findPath(e, fmt.Sprintf("%s[%d]", path, i), key); r != "" {
				return r, p
			}
		}
	}
	return "", ""
}
