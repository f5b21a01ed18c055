package policy

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
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
// pod's, or a parent of them. Everything else is judged as every host path
// is (judgeHostPath): never in or above a protected directory, and, after
// resolving symbolic links (as containerd does before it mounts), under a
// prefix the owner allowed.
func (c *checker) hostPaths(subj string, sb *runtimeapi.PodSandboxConfig, cc *runtimeapi.ContainerConfig) *Violation {
	var h *hostPathCheck
	for _, m := range cc.GetMounts() {
		if m.GetImage() != nil && m.GetImage().GetImage() != "" {
			return &Violation{RuleImageVolumes, subj, fmt.Sprintf("mounts image %q at %q (an image volume), which the device's runtime cannot mount; ship the files in the container image or an init container", m.GetImage().GetImage(), m.GetContainerPath()), "", ""}
		}
		hp := m.GetHostPath()
		if hp == "" {
			continue // nothing to mount from the host
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
	j         *hostPathJudge
	rootRaw   string // KubeletRootDir as configured (the kubelet's spelling)
	root      string // KubeletRootDir resolved; "" if unset
	table     []mountEntry
	tableErr  error
	loaded    bool
}

func (c *checker) newHostPathCheck(subj string, sb *runtimeapi.PodSandboxConfig, container string) *hostPathCheck {
	h := &hostPathCheck{c: c, subj: subj, container: container, j: c.p.newHostPathJudge(c.fs)}
	if md := sb.GetMetadata(); pathElement(md.GetUid()) {
		h.uid = md.GetUid()
	}
	if r := c.p.KubeletRootDir; r != "" && strings.HasPrefix(r, "/") && !hasDotDot(r) {
		h.rootRaw, h.root = filepath.Clean(r), filepath.Clean(r)
		if res, err := c.fs.Resolve(r); err == nil {
			h.root = res
		}
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
	_, v := h.c.p.judgeHostPath(h.c.fs, h.subj, "mounts host path", hp)
	return v
}

// admitsHostView reports whether files seen at v (resolved, outside the
// kubelet's directory) may reach a pod: the judge's rule.
func (h *hostPathCheck) admitsHostView(v string) bool {
	return h.j.protects(v) == "" && h.j.allowedRoot(v) != ""
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
			if h.admitsHostView(v) {
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
		if why := h.j.protects(hostView); why != "" {
			return h.violation(fmt.Sprintf("mounts host path %q, a bind mount of %q, %s", hp, hostView, why), "", "")
		}
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

// Mounts reads /proc/self/mountinfo with github.com/moby/sys/mountinfo,
// the parser containerd and runc use (it undoes the kernel's escapes).
func (realFS) Mounts() ([]mountEntry, error) {
	infos, err := mountinfo.GetMounts(nil)
	if err != nil {
		return nil, fmt.Errorf("reading mountinfo: %w", err)
	}
	if len(infos) == 0 {
		return nil, errors.New("empty mount table")
	}
	out := make([]mountEntry, 0, len(infos))
	for _, m := range infos {
		out = append(out, mountEntry{dev: fmt.Sprintf("%d:%d", m.Major, m.Minor), root: m.Root, point: m.Mountpoint})
	}
	return out, nil
}
