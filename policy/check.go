package policy

import (
	"fmt"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CheckSandbox checks a RunPodSandbox config. It returns nil, or a
// *Violation for the first rule the pod breaks.
func (p Policy) CheckSandbox(sb *runtimeapi.PodSandboxConfig) error {
	return asError(p.checker().sandbox(sb))
}

// CheckContainer checks a CreateContainer config together with its pod's
// sandbox config (CreateContainerRequest.SandboxConfig). The sandbox is
// checked again: the policy may have become stricter since the pod started,
// and a new container must not join a pod that would now be refused.
func (p Policy) CheckContainer(sb *runtimeapi.PodSandboxConfig, c *runtimeapi.ContainerConfig) error {
	return asError(p.checker().container(sb, c))
}

func asError(v *Violation) error {
	if v == nil {
		return nil
	}
	return v
}

type checker struct {
	p  Policy
	fs hostFS
}

func (p Policy) checker() *checker { return &checker{p: p, fs: realFS{}} }

func (c *checker) sandbox(sb *runtimeapi.PodSandboxConfig) *Violation {
	subj := podSubject(sb)
	sc := sb.GetLinux().GetSecurityContext()
	if sc.GetPrivileged() && !c.p.AllowPrivileged {
		return &Violation{RulePrivileged, subj, "asks for a privileged sandbox", KeyAllowPrivileged, "true"}
	}
	if v := c.namespaces(subj, sc.GetNamespaceOptions()); v != nil {
		return v
	}
	if !sc.GetPrivileged() {
		if v := c.seccomp(subj, sc.GetSeccomp(), sc.GetSeccompProfilePath()); v != nil {
			return v
		}
	}
	if v := c.hostPorts(subj, sb); v != nil {
		return v
	}
	return c.sysctls(subj, sb)
}

func (c *checker) container(sb *runtimeapi.PodSandboxConfig, cc *runtimeapi.ContainerConfig) *Violation {
	subj := fmt.Sprintf("container %q of %s", cc.GetMetadata().GetName(), podSubject(sb))
	sc := cc.GetLinux().GetSecurityContext()
	privileged := sc.GetPrivileged()
	// The container first: the kubelet marks the sandbox privileged as soon
	// as any container of the pod is, an ephemeral one added later
	// (kubectl debug --profile=sysadmin) included; the refusal must name
	// the container that asks, not the sandbox.
	if privileged && !c.p.AllowPrivileged {
		return &Violation{RulePrivileged, subj, "asks for privileged mode", KeyAllowPrivileged, "true"}
	}
	if v := c.sandbox(sb); v != nil {
		return v
	}
	if cc == nil {
		return nil // nothing to run; the backend refuses the request
	}
	if v := c.namespaces(subj, sc.GetNamespaceOptions()); v != nil {
		return v
	}
	// Kubernetes lets only privileged containers propagate mounts back to
	// the host; a container that could would reach past its own mounts.
	for _, m := range cc.GetMounts() {
		if m.GetPropagation() == runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL && !c.p.AllowPrivileged {
			return &Violation{RulePrivileged, subj, fmt.Sprintf("mounts %q with bidirectional propagation, which needs privileged mode", m.GetContainerPath()), KeyAllowPrivileged, "true"}
		}
	}
	// A privileged container (allowed, if we get here) has every capability
	// and device and an unmasked /proc anyway.
	if !privileged {
		if v := c.capabilities(subj, sc.GetCapabilities()); v != nil {
			return v
		}
		if v := c.devices(subj, cc); v != nil {
			return v
		}
		if v := c.unmaskedProc(subj, sc); v != nil {
			return v
		}
		if v := c.seccomp(subj, sc.GetSeccomp(), sc.GetSeccompProfilePath()); v != nil {
			return v
		}
	}
	return c.hostPaths(subj, sb, cc)
}

func (c *checker) namespaces(subj string, ns *runtimeapi.NamespaceOption) *Violation {
	if ns.GetPid() == runtimeapi.NamespaceMode_NODE && !c.p.AllowHostPID {
		return &Violation{RuleHostPID, subj, "asks for the device's PID namespace (hostPID)", KeyAllowHostPID, "true"}
	}
	if ns.GetIpc() == runtimeapi.NamespaceMode_NODE && !c.p.AllowHostIPC {
		return &Violation{RuleHostIPC, subj, "asks for the device's IPC namespace (hostIPC)", KeyAllowHostIPC, "true"}
	}
	if ns.GetNetwork() == runtimeapi.NamespaceMode_NODE && !c.p.AllowHostNetwork {
		return &Violation{RuleHostNetwork, subj, "asks for the device's network namespace (hostNetwork)", KeyAllowHostNetwork, "true"}
	}
	return nil
}

func (c *checker) sysctls(subj string, sb *runtimeapi.PodSandboxConfig) *Violation {
	all := sb.GetLinux().GetSysctls()
	if len(all) == 0 {
		return nil
	}
	names := make([]string, 0, len(all))
	for k := range all {
		names = append(names, k)
	}
	sort.Strings(names)
	ns := sb.GetLinux().GetSecurityContext().GetNamespaceOptions()
	hostNet := ns.GetNetwork() == runtimeapi.NamespaceMode_NODE
	hostIPC := ns.GetIpc() == runtimeapi.NamespaceMode_NODE
	for _, raw := range names {
		n := normalizeSysctl(raw)
		space := sysctlNamespace(n)
		switch {
		case strings.Contains(n, "*"):
			return &Violation{RuleSysctls, subj, fmt.Sprintf("sets sysctl %q, which is not a sysctl name", raw), "", ""}
		case space == nsNet && hostNet, space == nsIPC && hostIPC:
			return &Violation{RuleSysctls, subj, fmt.Sprintf("sets sysctl %q in the device's own %s namespace", raw, space), "", ""}
		case safeSysctls[n]:
			continue
		case space == "":
			return &Violation{RuleSysctls, subj, fmt.Sprintf("sets sysctl %q, which is not namespaced and would change the whole device", raw), "", ""}
		case c.sysctlAllowed(n):
			continue
		}
		return &Violation{RuleSysctls, subj, fmt.Sprintf("sets unsafe sysctl %q", raw), KeyAllowedUnsafeSysctls, n}
	}
	return nil
}

func (c *checker) sysctlAllowed(name string) bool {
	for _, e := range c.p.AllowedUnsafeSysctls {
		e = normalizeSysctl(e)
		if sysctlNamespace(e) != "" && matchSysctl(e, name) {
			return true
		}
	}
	return false
}

func (c *checker) capabilities(subj string, caps *runtimeapi.Capability) *Violation {
	check := func(raw, how string) *Violation {
		n := normalizeCap(raw)
		if runtimeDefaultCaps[n] || c.capAllowed(n) {
			return nil
		}
		what := "capability " + strconv.Quote(n)
		if n == "ALL" {
			what = "all capabilities (ALL)"
		}
		return &Violation{RuleCapabilities, subj, how + " " + what, KeyAllowedCapabilities, n}
	}
	for _, raw := range caps.GetAddCapabilities() {
		if v := check(raw, "adds"); v != nil {
			return v
		}
	}
	for _, raw := range caps.GetAddAmbientCapabilities() {
		if v := check(raw, "adds ambient"); v != nil {
			return v
		}
	}
	return nil
}

func (c *checker) capAllowed(n string) bool {
	for _, a := range c.p.AllowedCapabilities {
		if a = normalizeCap(a); a == "ALL" || a == n {
			return true
		}
	}
	return false
}

func (c *checker) devices(subj string, cc *runtimeapi.ContainerConfig) *Violation {
	for _, d := range cc.GetDevices() {
		hp := d.GetHostPath()
		if !c.deviceAllowed(hp) {
			return &Violation{RuleDevices, subj, fmt.Sprintf("asks for host device %q", hp), KeyAllowedDevices, hp}
		}
	}
	for _, d := range cc.GetCDIDevices() {
		if IsClaimCDIDevice(d.GetName()) {
			continue // the shim applies these only for their own pod (ClaimViolation)
		}
		if !slices.Contains(c.p.AllowedDevices, d.GetName()) {
			return &Violation{RuleDevices, subj, fmt.Sprintf("asks for CDI device %q", d.GetName()), KeyAllowedDevices, d.GetName()}
		}
	}
	return nil
}

// deviceAllowed: the path as given must match an allowed entry; if it is a
// symbolic link (/dev/serial/by-id/...), its target must match an entry or
// an entry's target too, since that is the node the runtime will create.
func (c *checker) deviceAllowed(hp string) bool {
	if !strings.HasPrefix(hp, "/") || hasDotDot(hp) {
		return false
	}
	hp = path.Clean(hp)
	if !c.matchDevice(hp, false) {
		return false
	}
	target, err := c.fs.Resolve(hp)
	if err != nil || target == hp {
		return err == nil
	}
	return c.matchDevice(target, true)
}

func (c *checker) matchDevice(p string, resolveEntries bool) bool {
	for _, e := range c.p.AllowedDevices {
		if !strings.HasPrefix(e, "/") {
			continue // a CDI name
		}
		if ok, _ := path.Match(e, p); ok {
			return true
		}
		if resolveEntries && !strings.ContainsAny(e, "*?[\\") {
			if t, err := c.fs.Resolve(e); err == nil && t == p {
				return true
			}
		}
	}
	return false
}

// unmaskedProc requires the runtime's default masked and read-only paths
// in the request. The kubelet sends them for ProcMount Default and empty
// lists for ProcMount Unmasked. Empty lists, or no security context at all
// (as crictl may send), are not "the runtime's defaults": containerd 1.6
// then masks nothing (tests/criconformance pins this).
func (c *checker) unmaskedProc(subj string, sc *runtimeapi.LinuxContainerSecurityContext) *Violation {
	if c.p.AllowUnmaskedProc {
		return nil
	}
	v := func(detail string) *Violation {
		return &Violation{RuleUnmaskedProc, subj, "asks for an unmasked /proc (" + detail + ")", KeyAllowUnmaskedProc, "true"}
	}
	if len(sc.GetMaskedPaths()) == 0 && len(sc.GetReadonlyPaths()) == 0 {
		return v("procMount: Unmasked, or no masked paths at all")
	}
	for _, p := range baselineMaskedPaths {
		if !slices.Contains(sc.GetMaskedPaths(), p) {
			return v(p + " is not masked")
		}
	}
	for _, p := range baselineReadonlyPaths {
		if !slices.Contains(sc.GetReadonlyPaths(), p) {
			return v(p + " is not read-only")
		}
	}
	return nil
}

// seccomp refuses a request for no seccomp filter: the kubelet sends
// ProfileType Unconfined (or, from older clients, the path "unconfined").
// Without a filter a container can create user namespaces and reach kernel
// interfaces the runtime's default profile blocks. A missing profile is
// left to the runtime: the kubelet always sends one (evelet's kubelet runs
// with seccompDefault, so a pod without a profile gets RuntimeDefault).
func (c *checker) seccomp(subj string, sp *runtimeapi.SecurityProfile, legacyPath string) *Violation {
	if c.p.AllowUnconfinedSeccomp {
		return nil
	}
	unconfined := sp.GetProfileType() == runtimeapi.SecurityProfile_Unconfined
	if sp == nil {
		unconfined = legacyPath == "unconfined"
	}
	if !unconfined {
		return nil
	}
	return &Violation{RuleSeccomp, subj, "asks for no seccomp filter (seccompProfile: Unconfined)", KeyAllowUnconfinedSeccomp, "true"}
}

// hostPorts checks the pod's port mappings (hostPort): the CNI portmap
// plugin DNATs the device's port to the pod, so a pod on a port the device
// uses would answer in its place (the apiserver's kubelet connections on
// 10250). A pod in the host network namespace is not checked: it binds its
// ports itself and the kernel refuses ports in use; allowing the host
// network already gave it every free port.
func (c *checker) hostPorts(subj string, sb *runtimeapi.PodSandboxConfig) *Violation {
	if sb.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork() == runtimeapi.NamespaceMode_NODE {
		return nil
	}
	var listening map[int]bool
	for _, pm := range sb.GetPortMappings() {
		port := int(pm.GetHostPort())
		if port == 0 {
			continue
		}
		proto := strings.ToLower(pm.GetProtocol().String())
		if port < 0 || port > 65535 {
			return &Violation{RuleHostPorts, subj, fmt.Sprintf("asks for host port %d, which is not a port", port), "", ""}
		}
		// The device's own ports first, so a port gets one answer whatever
		// the owner allowed: never a knob that could not help.
		if slices.Contains(DefaultDevicePorts, port) || slices.Contains(c.p.DevicePorts, port) {
			return &Violation{RuleHostPorts, subj, fmt.Sprintf("asks for host port %d/%s, which is one of the device's own services", port, proto), "", ""}
		}
		if listening == nil {
			ports, err := c.fs.ListeningPorts()
			if err != nil {
				return &Violation{RuleHostPorts, subj, fmt.Sprintf("asks for host port %d/%s, and the device's open ports cannot be read (%v)", port, proto, err), "", ""}
			}
			listening = ports
		}
		if listening[port] {
			return &Violation{RuleHostPorts, subj, fmt.Sprintf("asks for host port %d/%s, which a service of the device listens on", port, proto), "", ""}
		}
		if !c.hostPortAllowed(port) {
			return &Violation{RuleHostPorts, subj, fmt.Sprintf("asks for host port %d/%s", port, proto), KeyAllowedHostPorts, strconv.Itoa(port)}
		}
	}
	return nil
}

func (c *checker) hostPortAllowed(port int) bool {
	for _, e := range c.p.AllowedHostPorts {
		if lo, hi, ok := portRange(e); ok && lo <= port && port <= hi {
			return true
		}
	}
	return false
}

// podSubject names a pod as "pod namespace/name", readable and on one line
// whatever the client sent.
func podSubject(sb *runtimeapi.PodSandboxConfig) string {
	md := sb.GetMetadata()
	switch {
	case md.GetName() == "" && md.GetNamespace() == "":
		return "pod <unnamed>"
	case md.GetNamespace() == "":
		return "pod " + printable(md.GetName())
	}
	return "pod " + printable(md.GetNamespace()+"/"+md.GetName())
}

func printable(s string) string {
	for _, r := range s {
		if r <= ' ' || r > '~' || r == '"' {
			return strconv.Quote(s)
		}
	}
	return s
}
