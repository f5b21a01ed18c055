package policy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// hostFS is what the host path rule needs from the host; tests replace it.
type hostFS interface {
	// Resolve returns the absolute, clean path p with every symbolic link
	// resolved. A path that does not exist yet (the runtime creates missing
	// host directories) resolves through its longest existing prefix.
	Resolve(p string) (string, error)
	// Mounts returns the mount table (of the shim's mount namespace, which
	// is the kubelet's and the runtime's).
	Mounts() ([]mountEntry, error)
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	dev   string // "major:minor" of the filesystem
	root  string // the directory of that filesystem mounted here
	point string // where it is mounted
}

// hostPaths checks the containers' bind mounts. A host path is admitted when
// it lies, after resolving symbolic links (as containerd does before it
// mounts), under an allowed prefix: the pod's own kubelet directory, its own
// log directory, or one the owner allowed.
//
// Lying under the pod's kubelet directory is not enough when the path is a
// mount the kubelet made there: for a subPath, or a local persistent volume,
// the kubelet bind-mounts the volume's source into the pod directory, and
// that source may be any host path (a hostPath volume "/" with subPath
// "config" arrives here as .../pods/<uid>/volume-subpaths/...). Such a mount
// is traced back, through the mount table, to where its filesystem is
// visible outside the kubelet's directory; one of those places must be
// allowed. A filesystem visible nowhere else (the tmpfs of a secret, a CSI
// or NFS volume) is the volume itself and is admitted.
func (c *checker) hostPaths(subj string, sb *runtimeapi.PodSandboxConfig, mounts []*runtimeapi.Mount) *Violation {
	var (
		allowed     []string
		kubeletRoot string
		podsDir     string
		table       []mountEntry
		tableErr    error
		loaded      bool
	)
	for _, m := range mounts {
		hp := m.GetHostPath()
		if hp == "" {
			continue // an image volume, or nothing to mount from the host
		}
		if allowed == nil {
			allowed, kubeletRoot = c.allowedPrefixes(sb)
			if kubeletRoot != "" {
				podsDir = filepath.Join(kubeletRoot, "pods")
			}
		}
		if !strings.HasPrefix(hp, "/") || hasDotDot(hp) {
			return &Violation{RuleHostPath, subj, fmt.Sprintf("mounts host path %q, which is not a clean absolute path", hp), "", ""}
		}
		r, err := c.fs.Resolve(hp)
		if err != nil {
			return &Violation{RuleHostPath, subj, fmt.Sprintf("mounts host path %q, which cannot be resolved (%v)", hp, err), "", ""}
		}
		if !withinAny(r, allowed) {
			detail := fmt.Sprintf("mounts host path %q", hp)
			if r != filepath.Clean(hp) {
				detail += fmt.Sprintf(" (a link to %q)", r)
			}
			return &Violation{RuleHostPath, subj, detail, KeyAllowedHostPaths, r}
		}
		if podsDir == "" || !within(r, podsDir) {
			continue
		}
		if !loaded {
			table, tableErr = c.fs.Mounts()
			loaded = true
		}
		if tableErr != nil {
			return &Violation{RuleHostPath, subj, fmt.Sprintf("mounts host path %q, whose origin cannot be checked (%v)", hp, tableErr), "", ""}
		}
		origins := mountOrigins(table, r, podsDir, kubeletRoot)
		if len(origins) == 0 || withinAnyOf(origins, allowed) {
			continue
		}
		return &Violation{RuleHostPath, subj, fmt.Sprintf("mounts host path %q, a bind mount of %q", hp, origins[0]), KeyAllowedHostPaths, origins[0]}
	}
	return nil
}

// allowedPrefixes returns the resolved allowed prefixes for a pod and the
// resolved kubelet root dir ("" if unset).
func (c *checker) allowedPrefixes(sb *runtimeapi.PodSandboxConfig) (allowed []string, kubeletRoot string) {
	resolve := func(p string) string {
		if r, err := c.fs.Resolve(p); err == nil {
			return r
		}
		return filepath.Clean(p)
	}
	allowed = []string{} // non-nil: computed
	for _, p := range c.p.AllowedHostPaths {
		if strings.HasPrefix(p, "/") && !hasDotDot(p) {
			allowed = append(allowed, resolve(p))
		}
	}
	md := sb.GetMetadata()
	uid := md.GetUid()
	if c.p.KubeletRootDir != "" && strings.HasPrefix(c.p.KubeletRootDir, "/") {
		kubeletRoot = resolve(c.p.KubeletRootDir)
		if pathElement(uid) {
			allowed = append(allowed, filepath.Join(kubeletRoot, "pods", uid))
		}
	}
	// The kubelet names a pod's log directory <namespace>_<name>_<uid>.
	if c.p.PodLogsDir != "" && strings.HasPrefix(c.p.PodLogsDir, "/") &&
		pathElement(uid) && pathElement(md.GetNamespace()) && pathElement(md.GetName()) {
		allowed = append(allowed, filepath.Join(resolve(c.p.PodLogsDir), md.GetNamespace()+"_"+md.GetName()+"_"+uid))
	}
	return allowed, kubeletRoot
}

// pathElement reports whether s can name exactly one directory.
func pathElement(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, "/\x00")
}

// mountOrigins traces the resolved path r: if the mount it lies on was made
// under podsDir (by the kubelet), it returns the places outside kubeletRoot
// where the same file is visible. It returns nil when r needs no tracing or
// when its filesystem is visible nowhere else.
func mountOrigins(table []mountEntry, r, podsDir, kubeletRoot string) []string {
	var m *mountEntry
	for i := range table {
		e := &table[i]
		// The longest mount point wins; among equals, the last one (the top
		// of a stack of mounts on the same point).
		if within(r, e.point) && (m == nil || len(e.point) >= len(m.point)) {
			m = e
		}
	}
	if m == nil || !within(m.point, podsDir) {
		return nil
	}
	src := filepath.Join(m.root, rel(r, m.point))
	var out []string
	for _, n := range table {
		if n.dev != m.dev || within(n.point, kubeletRoot) || !within(src, n.root) {
			continue
		}
		out = append(out, filepath.Join(n.point, rel(src, n.root)))
	}
	return out
}

// within reports whether p is prefix or lies below it, by path elements.
func within(p, prefix string) bool {
	return prefix == "/" || p == prefix || strings.HasPrefix(p, prefix+"/")
}

func withinAny(p string, prefixes []string) bool {
	for _, pre := range prefixes {
		if within(p, pre) {
			return true
		}
	}
	return false
}

func withinAnyOf(ps, prefixes []string) bool {
	for _, p := range ps {
		if withinAny(p, prefixes) {
			return true
		}
	}
	return false
}

// rel is p relative to prefix (within(p, prefix) must hold), "" for prefix itself.
func rel(p, prefix string) string {
	if prefix == "/" {
		return strings.TrimPrefix(p, "/")
	}
	return strings.TrimPrefix(strings.TrimPrefix(p, prefix), "/")
}

// realFS is the host as the shim sees it.
type realFS struct{}

func (realFS) Resolve(p string) (string, error) {
	p = filepath.Clean(p)
	rest := ""
	for {
		r, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(r, rest), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		// p is missing, or a link in it dangles. A dangling link would be
		// followed when the runtime creates the directory: refuse.
		if fi, lerr := os.Lstat(p); lerr == nil && fi.Mode()&fs.ModeSymlink != 0 {
			return "", fmt.Errorf("%s is a dangling symbolic link", p)
		}
		if p == "/" {
			return "", err
		}
		rest = filepath.Join(filepath.Base(p), rest)
		p = filepath.Dir(p)
	}
}

func (realFS) Mounts() ([]mountEntry, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return parseMountInfo(b)
}

// parseMountInfo reads proc_pid_mountinfo(5): "id parent major:minor root
// mountpoint options [optional fields] - fstype source superoptions".
func parseMountInfo(b []byte) ([]mountEntry, error) {
	var out []mountEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		out = append(out, mountEntry{dev: f[2], root: unescapeMount(f[3]), point: unescapeMount(f[4])})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading mountinfo: %w", err)
	}
	if len(out) == 0 {
		return nil, errors.New("empty mount table")
	}
	return out, nil
}

// unescapeMount undoes the kernel's octal escapes (\040 for a space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
