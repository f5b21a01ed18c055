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

	"golang.org/x/sys/unix"
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
	// TypeBeneath returns the file type of root/rel, found without
	// following a symbolic link in any element of rel (the last included):
	// a link there is an error, or the type fs.ModeSymlink for the last.
	TypeBeneath(root, rel string) (fs.FileMode, error)
	// ListeningPorts returns the ports that sockets of the shim's network
	// namespace (the device's) listen on or are bound to, TCP and UDP,
	// IPv4 and IPv6.
	ListeningPorts() (map[int]bool, error)
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	dev   string // "major:minor" of the filesystem
	root  string // the directory of that filesystem mounted here
	point string // where it is mounted
}

// The kubelet's layout under its root directory (k8s.io/kubernetes v1.35
// pkg/kubelet/kubelet_getters.go, kubelet_pods.go makeMounts,
// kuberuntime_container.go makeMounts, pkg/volume/util/subpath).
const (
	pluginLocalVolume = "kubernetes.io~local-volume"
	pluginCSI         = "kubernetes.io~csi"
)

type kubeletKind int

const (
	kindEtcHosts kubeletKind = iota // pods/<uid>/etc-hosts
	kindTermLog                     // pods/<uid>/containers/<container>/<id>
	kindVolume                      // pods/<uid>/volumes/<plugin>/<name>[/mount for CSI]
	kindSubpath                     // pods/<uid>/volume-subpaths/<volume>/<container>/<index>
)

// hostPaths checks the containers' bind mounts.
//
// Inside the kubelet's root directory only the kubelet's own mounts for the
// pod's volumes are admitted, by their exact place in the kubelet's layout
// (kubeletPath): nothing a pod spec can aim at the pod's directory, another
// pod's, or a parent of them. Everything else must lie, after resolving
// symbolic links (as containerd does before it mounts), under the pod's own
// log directory or a prefix the owner allowed.
func (c *checker) hostPaths(subj string, sb *runtimeapi.PodSandboxConfig, cc *runtimeapi.ContainerConfig) *Violation {
	var h *hostPathCheck
	for _, m := range cc.GetMounts() {
		hp := m.GetHostPath()
		if hp == "" {
			continue // an image volume, or nothing to mount from the host
		}
		if h == nil {
			h = c.newHostPathCheck(subj, sb, cc.GetMetadata().GetName())
		}
		if v := h.check(hp); v != nil {
			return v
		}
	}
	return nil
}

// hostPathCheck holds what the checks of one container share.
type hostPathCheck struct {
	c         *checker
	subj      string
	uid       string // the pod's UID, "" if it cannot name a directory
	container string
	allowed   []string // resolved: the owner's prefixes and the pod's log directory
	rootRaw   string   // KubeletRootDir as configured (the kubelet's spelling)
	root      string   // KubeletRootDir resolved; "" if unset
	table     []mountEntry
	tableErr  error
	loaded    bool
}

func (c *checker) newHostPathCheck(subj string, sb *runtimeapi.PodSandboxConfig, container string) *hostPathCheck {
	h := &hostPathCheck{c: c, subj: subj, container: container}
	resolve := func(p string) string {
		if r, err := c.fs.Resolve(p); err == nil {
			return r
		}
		return filepath.Clean(p)
	}
	h.allowed = []string{}
	for _, p := range c.p.AllowedHostPaths {
		if strings.HasPrefix(p, "/") && !hasDotDot(p) {
			h.allowed = append(h.allowed, resolve(p))
		}
	}
	md := sb.GetMetadata()
	if pathElement(md.GetUid()) {
		h.uid = md.GetUid()
	}
	if r := c.p.KubeletRootDir; r != "" && strings.HasPrefix(r, "/") && !hasDotDot(r) {
		h.rootRaw, h.root = filepath.Clean(r), resolve(r)
	}
	// The kubelet names a pod's log directory <namespace>_<name>_<uid>.
	if c.p.PodLogsDir != "" && strings.HasPrefix(c.p.PodLogsDir, "/") &&
		h.uid != "" && pathElement(md.GetNamespace()) && pathElement(md.GetName()) {
		h.allowed = append(h.allowed, filepath.Join(resolve(c.p.PodLogsDir), md.GetNamespace()+"_"+md.GetName()+"_"+h.uid))
	}
	return h
}

func (h *hostPathCheck) violation(detail, key, value string) *Violation {
	return &Violation{RuleHostPath, h.subj, detail, key, value}
}

func (h *hostPathCheck) check(hp string) *Violation {
	if !strings.HasPrefix(hp, "/") || hasDotDot(hp) {
		return h.violation(fmt.Sprintf("mounts host path %q, which is not a clean absolute path", hp), "", "")
	}
	hp = filepath.Clean(hp)
	if h.root != "" {
		for _, r := range []string{h.rootRaw, h.root} {
			if within(hp, r) {
				return h.kubeletPath(hp, rel(hp, r))
			}
		}
	}
	r, err := h.c.fs.Resolve(hp)
	if err != nil {
		return h.violation(fmt.Sprintf("mounts host path %q, which cannot be resolved (%v)", hp, err), "", "")
	}
	if h.root != "" && within(r, h.root) {
		return h.violation(fmt.Sprintf("mounts host path %q, a link into the kubelet's directory (%q)", hp, r), "", "")
	}
	if !withinAny(r, h.allowed) {
		detail := fmt.Sprintf("mounts host path %q", hp)
		if r != hp {
			detail += fmt.Sprintf(" (a link to %q)", r)
		}
		return h.violation(detail, KeyAllowedHostPaths, r)
	}
	return nil
}

// kubeletPath admits a path inside the kubelet's root directory only if it
// is one of the mounts the kubelet makes for this pod and this container, it
// has no symbolic link below the root directory (so what is checked is what
// containerd mounts: containerd resolves links, and no container can write
// the parents of these paths, see docs/guardrails.md), and what is mounted
// there is the pod's own.
func (h *hostPathCheck) kubeletPath(hp, relp string) *Violation {
	outside := func(why string) *Violation {
		return h.violation(fmt.Sprintf("mounts host path %q, which is in the kubelet's directory but %s", hp, why), "", "")
	}
	el := strings.Split(relp, "/")
	if relp == "" || len(el) < 3 || el[0] != "pods" {
		return outside("not one of a pod's own volumes")
	}
	if h.uid == "" || el[1] != h.uid {
		return outside("in another pod's directory")
	}
	var kind kubeletKind
	rest := el[2:]
	switch {
	case len(rest) == 1 && rest[0] == "etc-hosts":
		kind = kindEtcHosts
	case len(rest) == 3 && rest[0] == "containers" && rest[1] == h.container:
		kind = kindTermLog
	case len(rest) == 3 && rest[0] == "volumes",
		len(rest) == 4 && rest[0] == "volumes" && rest[1] == pluginCSI && rest[3] == "mount":
		kind = kindVolume
	case len(rest) == 4 && rest[0] == "volume-subpaths" && rest[2] == h.container && isIndex(rest[3]):
		kind = kindSubpath
	default:
		return outside("not one of the kubelet's mounts for this container (the pod's etc-hosts, its volumes, this container's subPaths and termination-log)")
	}
	typ, err := h.c.fs.TypeBeneath(h.root, relp)
	if err != nil {
		return outside(fmt.Sprintf("cannot be opened as the kubelet's own file, without a symbolic link in it (%v)", err))
	}
	switch {
	case typ&fs.ModeSymlink != 0:
		return outside("is a symbolic link")
	case (kind == kindEtcHosts || kind == kindTermLog) && !typ.IsRegular():
		return outside("is not a regular file")
	case kind == kindVolume && !typ.IsDir():
		return outside("is not a directory")
	case kind == kindEtcHosts || kind == kindTermLog:
		return nil
	}
	return h.origin(hp, filepath.Join(h.root, relp), kind, rest[1])
}

func isIndex(s string) bool {
	_, err := strconv.ParseUint(s, 10, 31)
	return err == nil
}

// kubeletMade reports whether a mount point is one the kubelet makes: at
// least two levels below its root directory (pods/<uid>/..., plugins/...).
// The root directory, or its first level, may be a filesystem of its own.
func (h *hostPathCheck) kubeletMade(point string) bool {
	return within(point, h.root) && strings.Contains(rel(point, h.root), "/")
}

// ownVolume returns the pod's volume directory p lies in
// (pods/<uid>/volumes/<plugin>/<name>) and the plugin, or "" if none.
func (h *hostPathCheck) ownVolume(p string) (dir, plugin string) {
	vols := filepath.Join(h.root, "pods", h.uid, "volumes")
	if h.uid == "" || !within(p, vols) {
		return "", ""
	}
	el := strings.Split(rel(p, vols), "/")
	if len(el) < 2 || el[0] == "" {
		return "", ""
	}
	return filepath.Join(vols, el[0], el[1]), el[0]
}

// origin traces a volume or subPath mount of the pod (its resolved path p)
// to the files it shows. When the kubelet made the mount p lies on, the
// mount's filesystem and root come from the mount table, and every place
// where the same files are visible is a view of them. Admitted:
//   - a host file outside the kubelet's directory that the owner allowed
//     (a hostPath volume with a subPath, a local PersistentVolume);
//   - a file inside one of the pod's own volumes (a subPath of an emptyDir
//     on disk, or of a volume the kubelet mounted, itself admitted);
//   - for a volume other than a local PersistentVolume, a filesystem that
//     is visible only where the kubelet mounted it (a secret's or token's
//     tmpfs, a Memory emptyDir, a CSI or NFS volume): the volume itself.
//
// Anything else in the kubelet's directory (the pod's directory, another
// pod's volume or tmpfs, a parent of them) is refused with no knob.
func (h *hostPathCheck) origin(hp, p string, kind kubeletKind, plugin string) *Violation {
	if !h.loaded {
		h.table, h.tableErr = h.c.fs.Mounts()
		h.loaded = true
	}
	if h.tableErr != nil {
		return h.violation(fmt.Sprintf("mounts host path %q, whose origin cannot be checked (%v)", hp, h.tableErr), "", "")
	}
	m := covering(h.table, p)
	if m == nil {
		return h.violation(fmt.Sprintf("mounts host path %q, which is on no mount", hp), "", "")
	}
	if !h.kubeletMade(m.point) {
		// A plain directory of the pod's (an emptyDir on disk, a subPath
		// directory the kubelet did not mount over): the layout is the check.
		return nil
	}
	src := filepath.Join(m.root, rel(p, m.point))
	var hostView string // the first view outside the kubelet's directory
	canonical := false
	for _, n := range h.table {
		if n.dev != m.dev || !within(src, n.root) {
			continue
		}
		v := filepath.Join(n.point, rel(src, n.root))
		made := h.kubeletMade(n.point)
		canonical = canonical || !made
		switch {
		case !made && !within(v, h.root):
			if hostView == "" {
				hostView = v
			}
			if withinAny(v, h.allowed) {
				return nil
			}
		case plugin == pluginLocalVolume && kind == kindVolume:
			// A local PV is a host path: only a view outside counts.
		case !made:
			if dir, _ := h.ownVolume(v); dir != "" && kind == kindSubpath {
				return nil // a subPath of one of the pod's volumes on disk
			}
		case kind == kindSubpath:
			// Through a kubelet mount of one of the pod's own volumes, which
			// must itself be admissible.
			if dir, pl := h.ownVolume(n.point); dir != "" && within(v, dir) && n.point != p {
				if h.origin(n.point, n.point, kindVolume, pl) == nil {
					return nil
				}
			}
		}
	}
	if kind == kindVolume && plugin != pluginLocalVolume && !canonical {
		return nil // the volume's own filesystem, made by the kubelet
	}
	if hostView != "" {
		return h.violation(fmt.Sprintf("mounts host path %q, a bind mount of %q", hp, hostView), KeyAllowedHostPaths, hostView)
	}
	return h.violation(fmt.Sprintf("mounts host path %q, a bind mount of files in the kubelet's directory that are not this pod's own volume (%q on %s)", hp, src, m.dev), "", "")
}

// covering returns the mount p lies on: the longest mount point, and among
// equals the last one (the top of a stack of mounts on the same point).
func covering(table []mountEntry, p string) *mountEntry {
	var m *mountEntry
	for i := range table {
		e := &table[i]
		if within(p, e.point) && (m == nil || len(e.point) >= len(m.point)) {
			m = e
		}
	}
	return m
}

// pathElement reports whether s can name exactly one directory.
func pathElement(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, "/\x00")
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

// TypeBeneath opens root/rel with openat2(2) RESOLVE_BENEATH and
// RESOLVE_NO_SYMLINKS: the kernel refuses a symbolic link in any element of
// rel, so the type is that of the exact path the kubelet named. Kernels
// before 5.6 lack openat2; there every element is opened with O_NOFOLLOW.
func (realFS) TypeBeneath(root, rel string) (fs.FileMode, error) {
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, &os.PathError{Op: "open", Path: root, Err: err}
	}
	defer unix.Close(rfd)
	fd, err := unix.Openat2(rfd, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ENOSYS) {
		fd, err = openNoFollow(rfd, rel)
	}
	if err != nil {
		return 0, &os.PathError{Op: "open", Path: filepath.Join(root, rel), Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return fs.ModeDir, nil
	case unix.S_IFREG:
		return 0, nil
	case unix.S_IFLNK:
		return fs.ModeSymlink, nil
	}
	return fs.ModeIrregular, nil
}

// openNoFollow walks rel from dirfd one element at a time, refusing links.
func openNoFollow(dirfd int, rel string) (int, error) {
	fd, err := unix.Dup(dirfd)
	if err != nil {
		return -1, err
	}
	el := strings.Split(rel, "/")
	for i, e := range el {
		if e == "" || e == "." || e == ".." {
			unix.Close(fd)
			return -1, unix.EINVAL
		}
		next, err := unix.Openat(fd, e, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
		if i < len(el)-1 {
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT == unix.S_IFLNK {
				unix.Close(fd)
				return -1, unix.ELOOP
			}
		}
	}
	return fd, nil
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
