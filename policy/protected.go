package policy

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/lf-edge/evelet/internal/layout"
)

// Protected host directories: every directory that a component of the
// device writes, or follows as root, on a pod's behalf: the kubelet, the
// runtime (containerd), the VM backend and QEMU, the CNI plugins, evelet
// itself, and EVE's own keys and state. A pod that reaches one of them, or
// a parent of one (which contains it), can plant a symbolic link or a file
// that root then follows or reads: containerd appends a container's output
// to <pod-logs>/<pod>/<container>/N.log, the kubelet's log rotation gzips
// <N>.log.<timestamp> into the same directory, the kubelet cleans, chowns
// and mounts under its root directory. No config item can allow them: no
// workload needs them, and allowing one would hand root's pen to a tenant.
//
// The list is built by principle, from two sources: the directories the
// agent configured for this device (Policy.KubeletRootDir, PodLogsDir and
// ProtectedDirs: evelet's state and run directories, the runtime's socket
// directory, the CNI configuration and binary directories, the VM
// backend's), and the stock locations of the same components, in case one
// of them (a containerd started by EVE, a kubelet default) uses them.
var stockProtectedDirs = []protectedDir{
	{"/var/lib/kubelet", "the kubelet's stock root directory"},
	{"/var/log/pods", "the kubelet's stock pod-logs directory"},
	{"/var/log/containers", "the kubelet's container log links"},
	{"/var/lib/containerd", "containerd's root directory"},
	{"/run/containerd", "containerd's state directory"},
	{"/var/run/containerd", "containerd's state directory"},
	{"/run/containerd-user", "EVE's user containerd's state directory"},
	{"/persist/vault/containerd", "EVE's user containerd's root directory"},
	{"/etc/cni", "the CNI configuration directory"},
	{"/opt/cni", "the CNI plugin directory"},
	{"/usr/lib/cni", "the CNI plugin directory"},
	{"/var/lib/cni", "the CNI plugins' state directory"},
	{"/run/netns", "the network namespace directory"},
	{"/var/run/netns", "the network namespace directory"},
	{"/etc/cdi", "the stock CDI spec directory"},
	{"/var/run/cdi", "the stock CDI spec directory"},
	{"/run/cdi", "the stock CDI spec directory"},
	{"/config", "EVE's device identity and keys"},
	{"/persist/certs", "EVE's device certificates and keys"},
	{"/persist/status", "EVE's persistent state"},
	{"/persist/checkpoint", "EVE's controller configuration checkpoint"},
	{layout.DefaultStateDir, "evelet's state directory (the node's credentials)"},
	{"/run/evelet", "evelet's run directory"},
}

// NamedDir is a protected directory with whose it is, for refusals.
type NamedDir struct {
	Path string `json:"path"`
	What string `json:"what"`
}

type protectedDir struct {
	path string
	what string // for refusals: whose directory it is
}

// protectedDirs lists the policy's protected directories, the configured
// ones first (their names are the more precise).
func (p Policy) protectedDirs() []protectedDir {
	var out []protectedDir
	add := func(d, what string) {
		if strings.HasPrefix(d, "/") && !hasDotDot(d) && filepath.Clean(d) != "/" {
			out = append(out, protectedDir{filepath.Clean(d), what})
		}
	}
	add(p.PodLogsDir, "the kubelet's pod-logs directory")
	add(p.KubeletRootDir, "the kubelet's root directory")
	for _, d := range p.RuntimeDirs {
		add(d.Path, d.What)
	}
	for _, d := range p.ProtectedDirs {
		add(d, "a directory the device's own components use")
	}
	for _, d := range stockProtectedDirs {
		add(d.path, d.what)
	}
	return out
}

// hostPathJudge judges a host path that reaches a pod by any route (a
// hostPath volume, a local PersistentVolume, a bind mount the runtime is
// asked for): refused inside or above a protected directory, with no knob;
// else admitted only under a prefix the owner allowed. Every path is
// compared after its symbolic links are resolved, and the protected ones
// also as configured (the kubelet's spelling).
type hostPathJudge struct {
	protected []protectedDir // each as given and as resolved
	allowed   []string       // resolved
}

func (p Policy) newHostPathJudge(fs hostFS) *hostPathJudge {
	j := &hostPathJudge{}
	for _, d := range p.protectedDirs() {
		j.protected = append(j.protected, d)
		if r, err := fs.Resolve(d.path); err == nil && r != d.path {
			j.protected = append(j.protected, protectedDir{r, d.what})
		}
	}
	for _, a := range p.AllowedHostPaths {
		if !strings.HasPrefix(a, "/") || hasDotDot(a) {
			continue
		}
		if r, err := fs.Resolve(a); err == nil {
			j.allowed = append(j.allowed, r)
		} else {
			j.allowed = append(j.allowed, filepath.Clean(a))
		}
	}
	return j
}

// protects returns why a (resolved, clean) path may never reach a pod,
// "" if it may.
func (j *hostPathJudge) protects(r string) string {
	for _, d := range j.protected {
		switch {
		case within(r, d.path):
			return fmt.Sprintf("inside %s (%q)", d.what, d.path)
		case within(d.path, r):
			return fmt.Sprintf("a parent of %s (%q)", d.what, d.path)
		}
	}
	return ""
}

// allowedRoot returns the longest allowed prefix r lies in, "" if none.
func (j *hostPathJudge) allowedRoot(r string) string {
	root := ""
	for _, a := range j.allowed {
		if within(r, a) && len(a) >= len(root) {
			root = a
		}
	}
	return root
}

// HostPathVerdict is the judgement of one host path.
type HostPathVerdict struct {
	// Resolved is the path with its symbolic links resolved.
	Resolved string
	// AllowedRoot is the owner's allowed prefix (resolved) it lies under.
	AllowedRoot string
}

// JudgeHostPath judges a host path a pod asks for (a hostPath volume, a
// local PersistentVolume): subject and what name it in a refusal
// (`pod ns/name`, `has hostPath volume "v" on`). It returns the verdict, or
// a *Violation of RuleHostPath. The kubelet's volume guard and the CRI
// checks share it, so both sides refuse the same paths the same way.
func (p Policy) JudgeHostPath(subject, what, hp string) (HostPathVerdict, error) {
	v, viol := p.judgeHostPath(realFS{}, subject, what, hp)
	if viol != nil {
		return v, viol
	}
	return v, nil
}

func (p Policy) judgeHostPath(fs hostFS, subject, what, hp string) (HostPathVerdict, *Violation) {
	deny := func(detail, key, value string) *Violation {
		return &Violation{RuleHostPath, subject, fmt.Sprintf("%s %q%s", what, hp, detail), key, value}
	}
	if !strings.HasPrefix(hp, "/") || hasDotDot(hp) {
		return HostPathVerdict{}, deny(", which is not a clean absolute path", "", "")
	}
	clean := filepath.Clean(hp)
	r, err := fs.Resolve(clean)
	if err != nil {
		return HostPathVerdict{}, deny(fmt.Sprintf(", which cannot be resolved (%v)", err), "", "")
	}
	j := p.newHostPathJudge(fs)
	link := ""
	if r != clean {
		link = fmt.Sprintf(" (a link to %q)", r)
	}
	// The path as written counts too: the kubelet and containerd may
	// resolve it later, after a pod replaced a link.
	for _, c := range []string{r, clean} {
		if why := j.protects(c); why != "" {
			return HostPathVerdict{}, deny(link+", "+why, "", "")
		}
	}
	root := j.allowedRoot(r)
	if root == "" {
		return HostPathVerdict{}, deny(link, KeyAllowedHostPaths, r)
	}
	return HostPathVerdict{Resolved: r, AllowedRoot: root}, nil
}

// ResolveHostPath returns the absolute, clean path p with every symbolic
// link resolved; a missing path resolves through its longest existing
// prefix, and a dangling link is an error (the kubelet or the runtime would
// follow it when it creates the path). The one resolver of the policy and
// the kubelet's volume guard.
func ResolveHostPath(p string) (string, error) { return realFS{}.Resolve(p) }
