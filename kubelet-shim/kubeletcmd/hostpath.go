package kubeletcmd

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/volume"

	"github.com/lf-edge/evelet/policy"
)

// hostPathPluginName is the in-tree hostPath plugin's name
// (k8s.io/kubernetes pkg/volume/hostpath).
const hostPathPluginName = "kubernetes.io/host-path"

// VolumeGuard is the kubelet-side half of the no-host-path rule. The
// kubelet sets up a hostPath volume before it makes any CRI call, and for
// type DirectoryOrCreate / FileOrCreate that setup creates the path on the
// host (pkg/volume/hostpath: os.MkdirAll / os.OpenFile, following symbolic
// links). The guard wraps the hostPath plugin so that setup first checks
// the path against the owner's allowed host paths, and creates a missing
// path itself, below the allowed prefix and without following any link;
// the plugin is then given the non-creating type. The CRI shim still checks
// the mount itself when the container is created.
//
// The allowed paths come from PolicyFile, re-read whenever it changes, so
// the owner's config items apply without a kubelet restart. A missing or
// unreadable file allows nothing.
type VolumeGuard struct {
	PolicyFile string

	mu    sync.Mutex
	stamp string
	pol   policy.Policy
}

// policy returns the owner's policy, re-reading the policy file when its
// stamp changed.
func (g *VolumeGuard) policy() policy.Policy {
	g.mu.Lock()
	defer g.mu.Unlock()
	stamp := ""
	if fi, err := os.Stat(g.PolicyFile); err == nil && g.PolicyFile != "" {
		st, _ := fi.Sys().(*syscall.Stat_t)
		if st != nil {
			stamp = fmt.Sprintf("%d/%d/%d", st.Ino, fi.ModTime().UnixNano(), fi.Size())
		}
	}
	if stamp == g.stamp {
		return g.pol
	}
	g.stamp, g.pol = stamp, policy.Policy{}
	if stamp == "" {
		klog.InfoS("evelet hostPath guard: no policy file; no host path is allowed", "file", g.PolicyFile)
		return g.pol
	}
	b, err := os.ReadFile(g.PolicyFile)
	if err == nil {
		err = json.Unmarshal(b, &g.pol)
	}
	if err != nil {
		g.pol = policy.Policy{}
		klog.ErrorS(err, "evelet hostPath guard: policy file unreadable; no host path is allowed", "file", g.PolicyFile)
		return g.pol
	}
	klog.InfoS("evelet hostPath guard: policy loaded", "allowedHostPaths", g.pol.AllowedHostPaths)
	return g.pol
}

// Admit checks a hostPath volume of pod and, for an *OrCreate type whose
// path is missing, creates it safely. It returns nil or a
// *policy.Violation (no-host-path), or the creation error.
func (g *VolumeGuard) Admit(pod *corev1.Pod, volName, path string, typ corev1.HostPathType) error {
	subj := "pod " + pod.Namespace + "/" + pod.Name
	// One judgement for the kubelet and the CRI (policy.JudgeHostPath):
	// never in or above a directory the device's components write (the
	// kubelet's, containerd's, ...), whatever the owner allowed around
	// them; else under a prefix the owner allowed.
	v, err := g.policy().JudgeHostPath(subj, fmt.Sprintf("has hostPath volume %q on", volName), path)
	if err != nil {
		return err
	}
	resolved, root := v.Resolved, v.AllowedRoot
	if typ != corev1.HostPathDirectoryOrCreate && typ != corev1.HostPathFileOrCreate {
		return nil
	}
	if _, err := os.Lstat(resolved); err == nil {
		return nil // exists; the plugin checks its type
	}
	// Create from the deepest existing directory: normally the allowed
	// entry or below it; above it when the owner's entry itself does not
	// exist yet (the kubelet would create it too).
	base := resolved
	for {
		base = filepath.Dir(base)
		if _, err := os.Lstat(base); err == nil || base == "/" {
			break
		}
	}
	rel, _ := filepath.Rel(base, resolved)
	if err := createBeneath(base, rel, typ == corev1.HostPathDirectoryOrCreate); err != nil {
		return fmt.Errorf("evelet: creating hostPath %q of volume %q (allowed by %q): %w", path, volName, root, err)
	}
	return nil
}

// createBeneath creates root/rel (a directory, or an empty file when !dir)
// and its missing parents, resolving every element below root with
// RESOLVE_NO_SYMLINKS|RESOLVE_BENEATH: a link put there by a pod (an
// allowed path is writable by the pods that mount it) makes it fail
// instead of leading elsewhere. Modes are the kubelet's: 0755 and 0644.
func createBeneath(root, rel string, dir bool) error {
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", root, err)
	}
	defer func() { unix.Close(fd) }()
	how := func(flags uint64, mode uint64) *unix.OpenHow {
		return &unix.OpenHow{Flags: flags | unix.O_CLOEXEC, Mode: mode,
			Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_BENEATH}
	}
	parts := strings.Split(rel, string(filepath.Separator))
	for i, p := range parts {
		if p == "" || p == "." {
			continue
		}
		last := i == len(parts)-1
		if last && !dir {
			f, err := unix.Openat2(fd, p, how(unix.O_CREAT|unix.O_RDONLY|unix.O_NOFOLLOW, 0o644))
			if err != nil {
				return fmt.Errorf("create %s: %w", p, err)
			}
			return unix.Close(f)
		}
		if err := unix.Mkdirat(fd, p, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("mkdir %s: %w", p, err)
		}
		next, err := unix.Openat2(fd, p, how(unix.O_PATH|unix.O_DIRECTORY, 0))
		if err != nil {
			return fmt.Errorf("open %s: %w", p, err)
		}
		unix.Close(fd)
		fd = next
	}
	return nil
}

// guardedHostPath is the hostPath plugin with VolumeGuard in front of
// its mounter's SetUp.
type guardedHostPath struct {
	volume.VolumePlugin
	guard *VolumeGuard
}

var _ volume.PersistentVolumePlugin = (*guardedHostPath)(nil)

func (p *guardedHostPath) GetAccessModes() []corev1.PersistentVolumeAccessMode {
	if pv, ok := p.VolumePlugin.(volume.PersistentVolumePlugin); ok {
		return pv.GetAccessModes()
	}
	return []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
}

func (p *guardedHostPath) NewMounter(spec *volume.Spec, pod *corev1.Pod) (volume.Mounter, error) {
	var src *corev1.HostPathVolumeSource
	switch {
	case spec.Volume != nil && spec.Volume.HostPath != nil:
		src = spec.Volume.HostPath
	case spec.PersistentVolume != nil && spec.PersistentVolume.Spec.HostPath != nil:
		src = spec.PersistentVolume.Spec.HostPath
	default:
		return p.VolumePlugin.NewMounter(spec, pod)
	}
	typ := corev1.HostPathUnset
	if src.Type != nil {
		typ = *src.Type
	}
	inner := spec
	// The guard creates a missing path; the plugin must never do it.
	if nc, ok := map[corev1.HostPathType]corev1.HostPathType{
		corev1.HostPathDirectoryOrCreate: corev1.HostPathDirectory,
		corev1.HostPathFileOrCreate:      corev1.HostPathFile,
	}[typ]; ok {
		inner = withHostPathType(spec, nc)
	}
	m, err := p.VolumePlugin.NewMounter(inner, pod)
	if err != nil {
		return nil, err
	}
	return &guardedMounter{Mounter: m, guard: p.guard, pod: pod, vol: spec.Name(), path: src.Path, typ: typ}, nil
}

func withHostPathType(spec *volume.Spec, t corev1.HostPathType) *volume.Spec {
	c := *spec
	if spec.Volume != nil {
		c.Volume = spec.Volume.DeepCopy()
		c.Volume.HostPath.Type = &t
	}
	if spec.PersistentVolume != nil {
		c.PersistentVolume = spec.PersistentVolume.DeepCopy()
		c.PersistentVolume.Spec.HostPath.Type = &t
	}
	return &c
}

type guardedMounter struct {
	volume.Mounter
	guard *VolumeGuard
	pod   *corev1.Pod
	vol   string
	path  string
	typ   corev1.HostPathType
}

func (m *guardedMounter) SetUp(args volume.MounterArgs) error {
	if err := m.guard.Admit(m.pod, m.vol, m.path, m.typ); err != nil {
		return err
	}
	return m.Mounter.SetUp(args)
}
