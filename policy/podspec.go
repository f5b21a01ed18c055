package policy

import (
	"fmt"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
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
	// RuleUnboundedMemoryVolume bounds Memory-medium emptyDirs: sizeLimit
	// at most the pod's memory limit; in a pod without one, a sizeLimit of
	// at most a quarter of the device's memory (else its tmpfs may grow to
	// the node's whole allocatable memory).
	RuleUnboundedMemoryVolume = "no-unbounded-memory-volume"

	KeyAllowProbeHost              = KeyPrefix + "allow-probe-host"
	KeyAllowUnboundedMemoryVolumes = KeyPrefix + "allow-unbounded-memory-volumes"
)

// PodSpecRules are the knobs of the spec-level rules; Policy embeds them.
type PodSpecRules struct {
	// AllowProbeHost admits probes and lifecycle handlers with
	// httpGet.host or tcpSocket.host.
	AllowProbeHost bool
	// AllowUnboundedMemoryVolumes admits Memory emptyDirs beyond the
	// bounds of RuleUnboundedMemoryVolume.
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
	for i := range pod.Spec.Volumes {
		if v := r.memoryVolume(subj, pod, &pod.Spec.Volumes[i]); v != nil {
			return v
		}
	}
	return nil
}

// CheckMemoryVolume checks one volume of pod by the memory-volume rule
// alone: the kubelet's volume guard calls it before it sets an emptyDir up.
func (r PodSpecRules) CheckMemoryVolume(pod *corev1.Pod, vol *corev1.Volume) error {
	return asError(r.memoryVolume("pod "+printable(pod.Namespace+"/"+pod.Name), pod, vol))
}

// DeviceMemory returns the device's physical memory in bytes; tests
// replace it.
var DeviceMemory = func() (int64, error) {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0, err
	}
	return int64(si.Totalram) * int64(si.Unit), nil
}

// MemoryVolumeCapDivisor: a pod without a memory limit may have Memory
// emptyDirs of at most 1/MemoryVolumeCapDivisor of the device's memory
// each (a tmpfs is charged to the pod's cgroup, but only once written; a
// size beyond the device's memory is no bound at all).
const MemoryVolumeCapDivisor = 4

// memoryVolume bounds a Memory-medium emptyDir: by the pod's memory limit
// when it has one (sizeLimit must not exceed it), else sizeLimit must be
// set and at most a quarter of the device's memory.
func (r PodSpecRules) memoryVolume(subj string, pod *corev1.Pod, vol *corev1.Volume) *Violation {
	ed := vol.EmptyDir
	if r.AllowUnboundedMemoryVolumes || ed == nil || ed.Medium != corev1.StorageMediumMemory {
		return nil
	}
	deny := func(detail string) *Violation {
		return &Violation{RuleUnboundedMemoryVolume, subj, fmt.Sprintf("has emptyDir %q in memory (medium: Memory) %s", vol.Name, detail),
			KeyAllowUnboundedMemoryVolumes, "true"}
	}
	hasSize := ed.SizeLimit != nil && ed.SizeLimit.Sign() > 0
	if limit, ok := podMemoryLimit(pod); ok {
		if hasSize && ed.SizeLimit.Cmp(limit) > 0 {
			return deny(fmt.Sprintf("with sizeLimit %s, above the pod's memory limit %s (lower emptyDir.sizeLimit)", ed.SizeLimit.String(), limit.String()))
		}
		return nil
	}
	if !hasSize {
		return deny("without a sizeLimit, and no memory limit for the pod (set emptyDir.sizeLimit, or memory limits on every container)")
	}
	mem, err := DeviceMemory()
	if err != nil {
		return deny(fmt.Sprintf("and no memory limit for the pod, and the device's memory cannot be read (%v)", err))
	}
	limit := resource.NewQuantity(mem/MemoryVolumeCapDivisor, resource.BinarySI)
	if ed.SizeLimit.Cmp(*limit) > 0 {
		return deny(fmt.Sprintf("with sizeLimit %s and no memory limit for the pod: above a quarter of the device's memory (%s); lower emptyDir.sizeLimit or set memory limits on every container", ed.SizeLimit.String(), limit.String()))
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

// podMemoryLimit returns the memory limit the kubelet gives the pod, which
// also bounds its Memory emptyDirs: a pod-level limit, or, when every
// container has one, the larger of the containers' sum and the largest
// init container's (the kubelet's pod cgroup rule, pkg/kubelet/cm
// ResourceConfigForPod).
func podMemoryLimit(pod *corev1.Pod) (resource.Quantity, bool) {
	if pod.Spec.Resources != nil {
		if q, ok := pod.Spec.Resources.Limits[corev1.ResourceMemory]; ok && q.Sign() > 0 {
			return q, true
		}
	}
	var sum, maxInit resource.Quantity
	n := 0
	for i, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			n++
			q, ok := c.Resources.Limits[corev1.ResourceMemory]
			if !ok || q.Sign() <= 0 {
				return resource.Quantity{}, false
			}
			if i == 0 && c.RestartPolicy == nil {
				if q.Cmp(maxInit) > 0 {
					maxInit = q
				}
				continue
			}
			sum.Add(q)
		}
	}
	if n == 0 {
		return resource.Quantity{}, false
	}
	if maxInit.Cmp(sum) > 0 {
		return maxInit, true
	}
	return sum, true
}
