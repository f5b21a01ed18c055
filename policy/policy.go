// Package policy is the EVE guardrail policy of evelet's CRI shim: what a
// Kubernetes pod may ask of the device. The EVE controller owns the device
// and Kubernetes is a tenant, so a pod gets nothing that would let it reach
// past its own sandbox (host namespaces, privileged mode, host files and
// devices, extra capabilities, device-wide sysctls, an unmasked /proc)
// unless the device owner allowed it with an evelet.policy.* config item.
//
// The shim checks RunPodSandbox and CreateContainer requests with
// CheckSandbox and CheckContainer before anything reaches a backend; a
// refusal is a *Violation, which the shim turns into a PermissionDenied gRPC
// error whose one-line message names the rule and the config item that would
// allow the request. docs/guardrails.md explains every rule and key.
package policy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/lf-edge/evelet/internal/layout"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Rule names, as they appear in refusals and in the
// evelet_cri_policy_rejections_total{rule} metric.
const (
	RulePrivileged    = "no-privileged"
	RuleHostPID       = "no-host-pid"
	RuleHostIPC       = "no-host-ipc"
	RuleHostNetwork   = "no-host-network"
	RuleHostPath      = "no-host-path"
	RuleCapabilities  = "no-extra-capabilities"
	RuleDevices       = "no-devices"
	RuleSysctls       = "no-unsafe-sysctls"
	RuleUnmaskedProc  = "no-unmasked-proc"
	RuleHostPorts     = "no-host-ports"
	RuleSeccomp       = "no-unconfined-seccomp"
	configItemsPrefix = "evelet."
)

// Rules lists every rule name.
func Rules() []string {
	return append([]string{RulePrivileged, RuleHostPID, RuleHostIPC, RuleHostNetwork, RuleHostPath,
		RuleCapabilities, RuleDevices, RuleSysctls, RuleUnmaskedProc, RuleHostPorts, RuleSeccomp, RuleVolumePlugins, RuleImageVolumes},
		PodSpecRuleNames()...)
}

// Production locations of the kubelet's directories: internal/layout under
// the agent's default state directory. The agent sets the real ones.
var (
	DefaultKubeletRootDir = layout.State{Dir: layout.DefaultStateDir}.KubeletRoot()
	DefaultPodLogsDir     = layout.State{Dir: layout.DefaultStateDir}.PodLogs()
)

// Policy is what pods may ask for. The zero value denies everything the
// rules cover, including every host path; Default adds the production
// kubelet directories. A Policy is a plain value: the shim copies it when it
// is installed, and it is safe for concurrent checks.
type Policy struct {
	// AllowPrivileged admits privileged sandboxes and containers.
	AllowPrivileged bool
	// AllowHostPID, AllowHostIPC and AllowHostNetwork admit pods and
	// containers sharing the device's PID, IPC or network namespace.
	AllowHostPID     bool
	AllowHostIPC     bool
	AllowHostNetwork bool
	// AllowUnmaskedProc admits containers that ask for an unmasked /proc
	// (ProcMount: Unmasked, or masked/read-only path lists without the
	// runtime's defaults).
	AllowUnmaskedProc bool
	// AllowUnconfinedSeccomp admits pods and containers that ask for no
	// seccomp filter (seccompProfile type Unconfined).
	AllowUnconfinedSeccomp bool
	// AllowVMEmulation lets VM pods (RuntimeClass handler eve-vm) run under
	// QEMU's software emulation (TCG) on a device without /dev/kvm. Off by
	// default: TCG is slow and burns the device's CPU. The VM backend
	// checks it, as the pod's container is created.
	AllowVMEmulation bool
	// VMOverlayMaxSize caps, in bytes, the writable overlay of a VM pod's
	// container (what its guest writes): QEMU's RLIMIT_FSIZE, and the VM
	// is stopped when the guest writes past it. 0 means
	// DefaultVMOverlayMaxSize; read it with VMOverlayMax.
	VMOverlayMaxSize int64

	// AllowedHostPorts are the host ports (PodSandboxConfig port mappings,
	// a pod's hostPort) pods may take: entries "port" or "low-high".
	// A port the device uses is refused even when listed: DevicePorts, and
	// every port a socket of the device's network namespace is bound to
	// when the pod is checked.
	AllowedHostPorts []string
	// DevicePorts are further ports of the device's own services (the
	// kubelet's when not the default ones), beyond DefaultDevicePorts, that
	// no pod may take even while nothing listens on them (a restart). Not
	// a config item: the agent sets them.
	DevicePorts []int

	// KubeletRootDir is the kubelet's --root-dir. A container may mount
	// what lies under KubeletRootDir/pods/<its pod's UID>/: the kubelet puts
	// the pod's volumes, /etc/hosts and termination-log there. Other pods'
	// directories and the rest of the root dir (plugin and pod-resources
	// sockets) stay out of reach. It must be the real path, without bind
	// mounts in between; symbolic links are resolved. Empty: none.
	KubeletRootDir string
	// PodLogsDir is the kubelet's podLogsDir. No container may mount
	// anything in it or above it (protected.go): containerd and the
	// kubelet's log rotation write there as root. Empty: none.
	PodLogsDir string
	// ProtectedDirs are further directories the device's own components
	// write or follow (evelet's state and run directories, the runtime's,
	// the CNI's, the VM backend's), that no host path may lie in or above,
	// whatever the owner allows (protected.go). Not a config item: the
	// agent sets them.
	ProtectedDirs []string
	// RuntimeDirs are the directories the container runtime itself says it
	// writes and follows (containerd's root and state, its CRI plugin's,
	// runc's root, the CNI directories it uses), protected like
	// ProtectedDirs and named in refusals. Not a config item: the agent
	// asks the runtime (cri/containerd.RuntimeDirs).
	RuntimeDirs []NamedDir
	// AllowedHostPaths are further absolute path prefixes that containers
	// may bind-mount (hostPath volumes, local persistent volumes). A prefix
	// covers itself and everything below it, by whole path elements.
	AllowedHostPaths []string

	// AllowedVolumePlugins are the in-tree volume plugins that make the
	// kubelet mount on the host (nfs, iscsi, fc, ...) that pods may use,
	// by short name (volumes.go).
	AllowedVolumePlugins []string

	// AllowedCapabilities are capabilities a container may add beyond the
	// runtime's default set (which it may always re-add); names without
	// "CAP_", upper case, or "ALL".
	AllowedCapabilities []string
	// AllowedDevices are the device nodes a container may be given: host
	// paths, with path.Match wildcards ("/dev/ttyUSB*"), and CDI device
	// names ("vendor.com/class=name").
	AllowedDevices []string
	// AllowedUnsafeSysctls are namespaced sysctls, or prefixes ending in
	// "*", that pods may set beyond the Kubernetes safe set. Entries that
	// are not namespaced are ignored: they would change the whole device.
	AllowedUnsafeSysctls []string

	// AllowedNetworkInstances are the EVE network instances pods may attach
	// to (KeyNetworkInstances entries, normalized; networks.go). Enforced
	// by the eve-ni CNI plugin, not by the CRI checks.
	AllowedNetworkInstances []string

	// AssignedDevices are the EVE I/O adapters (labels) the owner gives to
	// Kubernetes (KeyDevices): the DRA driver publishes them, pods get them
	// only through a prepared ResourceClaim (devices.go).
	AssignedDevices []string

	// PodSpecRules are the knobs of the spec-level rules (podspec.go).
	PodSpecRules
	// NetworkRules are the owner's NAD rules for evelet-cni (networks.go).
	NetworkRules
}

// DefaultDevicePorts are the ports evelet's own services listen on by
// default: the kubelet's API (10250), read-only API (10255, off) and
// healthz (10248), and evelet's metrics (10260).
var DefaultDevicePorts = []int{10248, 10250, 10255, 10260}

// Default is the production policy: everything denied, pods may mount their
// own kubelet directories at the production locations.
func Default() Policy {
	return Policy{KubeletRootDir: DefaultKubeletRootDir, PodLogsDir: DefaultPodLogsDir}
}

// Clone returns a copy that shares no slices with p.
func (p Policy) Clone() Policy {
	p.AllowedHostPaths = slices.Clone(p.AllowedHostPaths)
	p.AllowedCapabilities = slices.Clone(p.AllowedCapabilities)
	p.AllowedDevices = slices.Clone(p.AllowedDevices)
	p.AllowedUnsafeSysctls = slices.Clone(p.AllowedUnsafeSysctls)
	p.AllowedHostPorts = slices.Clone(p.AllowedHostPorts)
	p.DevicePorts = slices.Clone(p.DevicePorts)
	p.ProtectedDirs = slices.Clone(p.ProtectedDirs)
	p.RuntimeDirs = slices.Clone(p.RuntimeDirs)
	p.AllowedVolumePlugins = slices.Clone(p.AllowedVolumePlugins)
	p.AllowedNetworkInstances = slices.Clone(p.AllowedNetworkInstances)
	p.AssignedDevices = slices.Clone(p.AssignedDevices)
	p.NetworkRules = p.NetworkRules.clone()
	return p
}

// Violation is a refused request. Its message is one line:
//
//	evelet guardrail "no-privileged": container "main" of pod default/x asks
//	for privileged mode; the device owner can allow it with config item
//	evelet.policy.allow-privileged=true
type Violation struct {
	// Rule is one of the Rule* names.
	Rule string
	// Subject is `pod ns/name` or `container "c" of pod ns/name`.
	Subject string
	// Detail says what was asked for, e.g. `asks for privileged mode`.
	Detail string
	// Key is the config item that would allow the request, "" if none can.
	Key string
	// Value is what Key needs: "true" for a switch, or the entry to add to
	// a list.
	Value string
}

func (v *Violation) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "evelet guardrail %q: %s %s; ", v.Rule, v.Subject, v.Detail)
	switch {
	case v.Key == "":
		b.WriteString("no config item can allow this")
	case isListKey(v.Key):
		fmt.Fprintf(&b, "the device owner can allow it by adding %q to config item %s", v.Value, v.Key)
	default:
		fmt.Fprintf(&b, "the device owner can allow it with config item %s=%s", v.Key, v.Value)
	}
	return b.String()
}

// GRPCStatus makes a Violation a PermissionDenied error for gRPC.
func (v *Violation) GRPCStatus() *status.Status {
	return status.New(codes.PermissionDenied, v.Error())
}

// DefaultVMOverlayMaxSize is the cap of a VM's writable overlay when the
// owner sets none: room for a guest's logs and package updates, small
// next to the /persist of the devices EVE runs on. MinVMOverlayMaxSize is
// the least an owner may set (below it QEMU's own log hits the cap).
const (
	DefaultVMOverlayMaxSize = 10 << 30
	MinVMOverlayMaxSize     = 1 << 20
)

// VMOverlayMax is the cap of a VM's writable overlay in bytes.
func (p Policy) VMOverlayMax() int64 {
	if p.VMOverlayMaxSize > 0 {
		return p.VMOverlayMaxSize
	}
	return DefaultVMOverlayMaxSize
}
