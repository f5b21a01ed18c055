package apicache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/lf-edge/evelet/internal/atomicfile"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
)

var (
	codecs = serializer.NewCodecFactory(scheme.Scheme)
	// diskCodec writes objects as JSON with apiVersion and kind, so a file
	// decodes on its own.
	decoder = codecs.UniversalDeserializer()
)

// Store is the cache of one client on disk and in memory: the objects the
// client read (by resource, namespace and name), the resource version each
// list or watch scope was last seen at, and the service account tokens it
// was issued. Every file is 0600 under a 0700 directory, written
// temp-then-rename; Secrets and tokens are credentials.
type Store struct {
	dir string

	mu     sync.RWMutex
	objs   map[schema.GroupVersionResource]map[string]runtime.Object // key: ns/name
	scopes map[string]string                                         // scope key -> resourceVersion
	tokens map[string][]byte                                         // token key -> encoded TokenRequest
}

// OpenStore loads what an earlier run persisted under dir; files that do not
// decode are dropped (the next online read replaces them).
func OpenStore(dir string) (*Store, error) {
	s := &Store{dir: dir, objs: map[schema.GroupVersionResource]map[string]runtime.Object{}, scopes: map[string]string{}, tokens: map[string][]byte{}}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	if b, err := os.ReadFile(s.scopesPath()); err == nil {
		_ = json.Unmarshal(b, &s.scopes)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		sub := filepath.Join(dir, e.Name())
		files, err := os.ReadDir(sub)
		if err != nil {
			continue
		}
		if e.Name() == "tokens" {
			for _, f := range files {
				if b, err := os.ReadFile(filepath.Join(sub, f.Name())); err == nil && !strings.HasPrefix(f.Name(), ".") {
					s.tokens[strings.TrimSuffix(f.Name(), ".json")] = b
				}
			}
			continue
		}
		gvr, ok := parseGVRDir(e.Name())
		if !ok {
			continue
		}
		for _, f := range files {
			if !strings.HasSuffix(f.Name(), ".json") || strings.HasPrefix(f.Name(), ".") {
				continue
			}
			b, err := os.ReadFile(filepath.Join(sub, f.Name()))
			if err != nil {
				continue
			}
			obj, _, err := decoder.Decode(b, nil, nil)
			if err != nil {
				continue
			}
			if s.objs[gvr] == nil {
				s.objs[gvr] = map[string]runtime.Object{}
			}
			s.objs[gvr][objKey(obj)] = obj
		}
	}
	return s, nil
}

func (s *Store) scopesPath() string { return filepath.Join(s.dir, "scopes.json") }

// gvrDir names a resource's directory: group_version_resource (no part
// contains "_").
func gvrDir(gvr schema.GroupVersionResource) string {
	return gvr.Group + "_" + gvr.Version + "_" + gvr.Resource
}

func parseGVRDir(name string) (schema.GroupVersionResource, bool) {
	p := strings.Split(name, "_")
	if len(p) != 3 {
		return schema.GroupVersionResource{}, false
	}
	return schema.GroupVersionResource{Group: p[0], Version: p[1], Resource: p[2]}, true
}

// objKey is namespace/name; names and namespaces contain no "/" or "_".
func objKey(obj runtime.Object) string {
	m, err := meta.Accessor(obj)
	if err != nil {
		return ""
	}
	return m.GetNamespace() + "/" + m.GetName()
}

func (s *Store) objPath(gvr schema.GroupVersionResource, key string) string {
	return filepath.Join(s.dir, gvrDir(gvr), strings.Replace(key, "/", "_", 1)+".json")
}

// Put stores obj (a typed object of gvr) in memory and on disk.
func (s *Store) Put(gvr schema.GroupVersionResource, obj runtime.Object) error {
	key := objKey(obj)
	if key == "" || key == "/" {
		return errors.New("object without a name")
	}
	b, err := encodeJSON(gvr.GroupVersion(), obj)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.objs[gvr] == nil {
		s.objs[gvr] = map[string]runtime.Object{}
	}
	s.objs[gvr][key] = obj
	p := s.objPath(gvr, key)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(p, b, 0o600)
}

// Delete forgets one object.
func (s *Store) Delete(gvr schema.GroupVersionResource, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.objs[gvr], key)
	if err := os.Remove(s.objPath(gvr, key)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Get returns one cached object.
func (s *Store) Get(gvr schema.GroupVersionResource, ns, name string) (runtime.Object, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	o, ok := s.objs[gvr][ns+"/"+name]
	return o, ok
}

// List returns the cached objects of gvr that match sc.
func (s *Store) List(gvr schema.GroupVersionResource, sc Scope) []runtime.Object {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []runtime.Object
	for _, o := range s.objs[gvr] {
		if sc.Matches(o) {
			out = append(out, o)
		}
	}
	sortByName(out)
	return out
}

// Replace makes objs the complete content of scope sc: what the cache held
// in sc and objs lacks was deleted upstream.
func (s *Store) Replace(gvr schema.GroupVersionResource, sc Scope, objs []runtime.Object, rv string) error {
	keep := map[string]bool{}
	var errs []error
	for _, o := range objs {
		keep[objKey(o)] = true
		errs = append(errs, s.Put(gvr, o))
	}
	for _, o := range s.List(gvr, sc) {
		if k := objKey(o); !keep[k] {
			errs = append(errs, s.Delete(gvr, k))
		}
	}
	errs = append(errs, s.SetScopeRV(sc, rv))
	return errors.Join(errs...)
}

// ScopeRV is the resource version scope sc was last seen at upstream ("" if
// never).
func (s *Store) ScopeRV(sc Scope) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.scopes[sc.Key()]
}

// SetScopeRV records the newest resource version seen for sc.
func (s *Store) SetScopeRV(sc Scope, rv string) error {
	if rv == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.scopes[sc.Key()]; ok && newerRV(old, rv) {
		return nil
	}
	if s.scopes[sc.Key()] == rv {
		return nil
	}
	s.scopes[sc.Key()] = rv
	b, err := json.Marshal(s.scopes)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(s.scopesPath(), b, 0o600)
}

// newerRV: a is a later resource version than b. Resource versions are
// opaque to clients, but etcd3's are decimal revisions; anything else
// counts as not newer, so the latest seen wins.
func newerRV(a, b string) bool {
	x, err1 := strconv.ParseUint(a, 10, 64)
	y, err2 := strconv.ParseUint(b, 10, 64)
	return err1 == nil && err2 == nil && x > y
}

// PutToken stores an issued TokenRequest response under key.
func (s *Store) PutToken(key string, encoded []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[key] = encoded
	p := filepath.Join(s.dir, "tokens", key+".json")
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(p, encoded, 0o600)
}

// Token returns the TokenRequest response stored under key.
func (s *Store) Token(key string) ([]byte, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	b, ok := s.tokens[key]
	return b, ok
}

// Len is how many objects and tokens the cache holds.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := len(s.tokens)
	for _, m := range s.objs {
		n += len(m)
	}
	return n
}

// tokenKey identifies a token request by what the issued token depends on:
// the service account, and the request's spec (audiences, expiry, bound
// object, pod UID included).
func tokenKey(ns, sa string, spec []byte) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00", ns, sa)
	h.Write(spec)
	return hex.EncodeToString(h.Sum(nil))[:32]
}

func encodeJSON(gv schema.GroupVersion, obj runtime.Object) ([]byte, error) {
	info, ok := runtime.SerializerInfoForMediaType(codecs.SupportedMediaTypes(), runtime.ContentTypeJSON)
	if !ok {
		return nil, errors.New("no JSON serializer")
	}
	return runtime.Encode(codecs.EncoderForVersion(info.Serializer, gv), obj)
}
