package policy

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
)

// Spec-level rules: dangers that the CRI request does not show, because
// the kubelet acts on them itself (probes, lifecycle hooks) or before any
// CRI call (volumes). The shim reads the pod from the apiserver at
// RunPodSandbox and checks it with CheckPodSpec; docs/guardrails.md,
// "Kubelet-side rules".
const (
	// RuleProbeHost refuses probes and lifecycle handlers that name a host:
	// the kubelet runs them from the device's own network namespace, which
	// makes them a port and status-code oracle for the device's loopback
	// and management-network services.
	RuleProbeHost = "no-probe-host"
	// RuleUnboundedMemoryVolume refuses a Memory-medium emptyDir without a
	// sizeLimit in a pod without a memory limit: its tmpfs may then grow to
	// the node's whole allocatable memory.
	RuleUnboundedMemoryVolume = "no-unbounded-memory-volume"

	KeyAllowProbeHost              = KeyPrefix + "allow-probe-host"
	KeyAllowUnboundedMemoryVolumes = KeyPrefix + "allow-unbounded-memory-volumes"
)

// PodSpecRules are the knobs of the spec-level rules; Policy embeds them.
type PodSpecRules struct {
	// AllowProbeHost admits probes and lifecycle handlers with
	// httpGet.host or tcpSocket.host.
	AllowProbeHost bool
	// AllowUnboundedMemoryVolumes admits Memory emptyDirs without a
	// sizeLimit in pods without a memory limit.
	AllowUnboundedMemoryVolumes bool
}

// PodSpecRuleNames lists the spec-level rules.
func PodSpecRuleNames() []string { return []string{RuleProbeHost, RuleUnboundedMemoryVolume} }

// applyPodSpecKey sets a spec-level knob; ok is false for a key it does
// not know.
func applyPodSpecKey(p *PodSpecRules, key, v string) (ok bool, err error) {
	switch key {
	case KeyAllowProbeHost:
		return true, parseBool(v, &p.AllowProbeHost)
	case KeyAllowUnboundedMemoryVolumes:
		return true, parseBool(v, &p.AllowUnboundedMemoryVolumes)
	}
	return false, nil
}

// CheckPodSpec checks a pod as the apiserver has it. It returns nil or a
// *Violation for the first rule the pod breaks.
func (r PodSpecRules) CheckPodSpec(pod *corev1.Pod) error {
	return asError(r.check(pod))
}

func (r PodSpecRules) check(pod *corev1.Pod) *Violation {
	subj := "pod " + printable(pod.Namespace+"/"+pod.Name)
	if !r.AllowProbeHost {
		if v := probeHosts(subj, pod); v != nil {
			return v
		}
	}
	if !r.AllowUnboundedMemoryVolumes && !hasMemoryLimit(pod) {
		for _, vol := range pod.Spec.Volumes {
			ed := vol.EmptyDir
			if ed == nil || ed.Medium != corev1.StorageMediumMemory {
				continue
			}
			if ed.SizeLimit == nil || ed.SizeLimit.Sign() <= 0 {
				return &Violation{RuleUnboundedMemoryVolume, subj,
					fmt.Sprintf("has emptyDir %q in memory (medium: Memory) without a sizeLimit, and no memory limit for the pod (set emptyDir.sizeLimit, or memory limits on every container)", vol.Name),
					KeyAllowUnboundedMemoryVolumes, "true"}
			}
		}
	}
	return nil
}

// probeHosts finds a probe or lifecycle handler with a host. Ephemeral
// containers cannot have either (API validation).
func probeHosts(subj string, pod *corev1.Pod) *Violation {
	check := func(c *corev1.Container, what string, h *corev1.ProbeHandler, lh *corev1.LifecycleHandler) *Violation {
		var hg *corev1.HTTPGetAction
		var ts *corev1.TCPSocketAction
		if h != nil {
			hg, ts = h.HTTPGet, h.TCPSocket
		}
		if lh != nil {
			hg, ts = lh.HTTPGet, lh.TCPSocket
		}
		host, kind := "", ""
		switch {
		case hg != nil && hg.Host != "":
			host, kind = hg.Host, "httpGet"
		case ts != nil && ts.Host != "":
			host, kind = ts.Host, "tcpSocket"
		default:
			return nil
		}
		return &Violation{RuleProbeHost, fmt.Sprintf("container %q of %s", c.Name, subj),
			fmt.Sprintf("has a %s %s with host %q (the kubelet would connect from the device's own network, not the pod's)", what, kind, printable(host)),
			KeyAllowProbeHost, "true"}
	}
	all := make([]*corev1.Container, 0, len(pod.Spec.InitContainers)+len(pod.Spec.Containers))
	for i := range pod.Spec.InitContainers {
		all = append(all, &pod.Spec.InitContainers[i])
	}
	for i := range pod.Spec.Containers {
		all = append(all, &pod.Spec.Containers[i])
	}
	for _, c := range all {
		for _, p := range []struct {
			what string
			pr   *corev1.Probe
		}{{"liveness probe", c.LivenessProbe}, {"readiness probe", c.ReadinessProbe}, {"startup probe", c.StartupProbe}} {
			if p.pr != nil {
				if v := check(c, p.what, &p.pr.ProbeHandler, nil); v != nil {
					return v
				}
			}
		}
		if lc := c.Lifecycle; lc != nil {
			if v := check(c, "postStart handler", nil, lc.PostStart); lc.PostStart != nil && v != nil {
				return v
			}
			if v := check(c, "preStop handler", nil, lc.PreStop); lc.PreStop != nil && v != nil {
				return v
			}
		}
	}
	return nil
}

// hasMemoryLimit reports whether the kubelet gives the pod a memory limit,
// which then also bounds its Memory emptyDirs: a pod-level limit, or a
// limit on every container (the kubelet's pod cgroup rule,
// pkg/kubelet/cm ResourceConfigForPod; init containers included).
func hasMemoryLimit(pod *corev1.Pod) bool {
	if pod.Spec.Resources != nil {
		if q, ok := pod.Spec.Resources.Limits[corev1.ResourceMemory]; ok && q.Sign() > 0 {
			return true
		}
	}
	n := 0
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			n++
			if q, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok || q.Sign() <= 0 {
				return false
			}
		}
	}
	return n > 0
}
