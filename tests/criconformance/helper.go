// Package criconformance checks evelet's CRI server against a real
// containerd, the way the kubelet uses it: every RPC the kubelet calls,
// streaming included, driven through the kubelet's own CRI client; the EVE
// guardrails with the real backend; and the shim's overhead against
// containerd direct (benchmarks).
//
// The tests need root, containerd 1.6+, runc, the CNI plugins in
// /usr/lib/cni and a static /bin/busybox; without them they skip, saying
// which is missing. Run them with
//
//	go test ./tests/criconformance/
//	go test -run '^$' -bench . -benchtime 1x ./tests/criconformance/
//
// This file holds the request builders: pods and containers shaped like the
// ones the kubelet (v1.35) sends, and laid out on disk as the kubelet lays
// them out, so that the guardrail policy sees what it sees in the field.
package criconformance

import (
	"fmt"
	"os"
	"path/filepath"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/policy"
)

// Pod is a pod as the kubelet knows it: identity and directories.
type Pod struct {
	Namespace, Name, UID string
	// KubeletRoot and PodLogsDir are the kubelet's --root-dir and podLogsDir.
	KubeletRoot, PodLogsDir string
}

// Dir is the kubelet's directory for the pod: <root>/pods/<uid>.
func (p Pod) Dir() string { return filepath.Join(p.KubeletRoot, "pods", p.UID) }

// CgroupRoot is the cgroup (cgroupfs driver) under which test pods live,
// as the kubelet puts its pods under /kubepods; it holds the process id so
// that test runs do not share it.
func CgroupRoot() string { return fmt.Sprintf("/evelet-criconf-%d", os.Getpid()) }

// CgroupParent is the pod's cgroup, like the kubelet's
// /kubepods/besteffort/pod<uid>.
func (p Pod) CgroupParent() string { return CgroupRoot() + "/pod" + p.UID }

// LogDir is the pod's log directory: <podLogsDir>/<ns>_<name>_<uid>.
func (p Pod) LogDir() string {
	return filepath.Join(p.PodLogsDir, p.Namespace+"_"+p.Name+"_"+p.UID)
}

// Prepare creates what the kubelet creates before RunPodSandbox and
// CreateContainer: the pod directory with etc-hosts, the log directory, and
// per container a log directory and a termination-log file.
func (p Pod) Prepare(containers ...string) error {
	if err := os.MkdirAll(p.Dir(), 0o750); err != nil {
		return err
	}
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost\n10.0.0.1\t%s\n", p.Name)
	if err := os.WriteFile(filepath.Join(p.Dir(), "etc-hosts"), []byte(hosts), 0o644); err != nil {
		return err
	}
	for _, c := range containers {
		if err := os.MkdirAll(filepath.Join(p.LogDir(), c), 0o755); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(p.Dir(), "containers", c), 0o750); err != nil {
			return err
		}
		if err := os.WriteFile(p.terminationLog(c), nil, 0o666); err != nil {
			return err
		}
	}
	return nil
}

func (p Pod) terminationLog(container string) string {
	return filepath.Join(p.Dir(), "containers", container, "0f1e2d3c")
}

func (p Pod) labels() map[string]string {
	return map[string]string{
		"io.kubernetes.pod.name":      p.Name,
		"io.kubernetes.pod.namespace": p.Namespace,
		"io.kubernetes.pod.uid":       p.UID,
		"app":                         p.Name,
	}
}

// SandboxConfig is the kubelet's RunPodSandbox config for the pod: pod
// network, own PID namespace per container, pod IPC namespace.
func (p Pod) SandboxConfig() *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: p.Name, Namespace: p.Namespace, Uid: p.UID},
		Hostname:     p.Name,
		LogDirectory: p.LogDir(),
		Labels:       p.labels(),
		Annotations:  map[string]string{"kubernetes.io/config.source": "api"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: p.CgroupParent(),
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: podNamespaces(),
			},
		},
	}
}

func podNamespaces() *runtimeapi.NamespaceOption {
	return &runtimeapi.NamespaceOption{
		Network: runtimeapi.NamespaceMode_POD,
		Pid:     runtimeapi.NamespaceMode_CONTAINER,
		Ipc:     runtimeapi.NamespaceMode_POD,
	}
}

// SecurityContext is what the kubelet sends for a container without a
// securityContext of its own: the pod's namespaces, the default masked and
// read-only /proc paths.
func SecurityContext() *runtimeapi.LinuxContainerSecurityContext {
	return &runtimeapi.LinuxContainerSecurityContext{
		NamespaceOptions: podNamespaces(),
		MaskedPaths:      append(policy.BaselineMaskedPaths(), "/sys/devices/virtual/powercap"),
		ReadonlyPaths:    policy.BaselineReadonlyPaths(),
	}
}

// Container is the kubelet's CreateContainer config for a busybox container
// of the pod running command, with the kubelet's own mounts (/etc/hosts,
// /dev/termination-log) from the pod directory. Call Prepare first.
func (p Pod) Container(name string, command ...string) *runtimeapi.ContainerConfig {
	l := p.labels()
	l["io.kubernetes.container.name"] = name
	return &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image:    &runtimeapi.ImageSpec{Image: images.BusyboxRef},
		Command:  command,
		LogPath:  filepath.Join(name, "0.log"),
		Labels:   l,
		Mounts: []*runtimeapi.Mount{
			{ContainerPath: "/etc/hosts", HostPath: filepath.Join(p.Dir(), "etc-hosts")},
			{ContainerPath: "/dev/termination-log", HostPath: p.terminationLog(name)},
		},
		Linux: &runtimeapi.LinuxContainerConfig{
			Resources:       &runtimeapi.LinuxContainerResources{CpuShares: 2, OomScoreAdj: 1000},
			SecurityContext: SecurityContext(),
		},
	}
}
