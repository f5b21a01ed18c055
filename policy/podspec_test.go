package policy

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func specPod(mut func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "main"}}},
	}
	mut(p)
	return p
}

func memLimit(q string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(q)}}
}

func TestCheckPodSpec(t *testing.T) {
	memVol := func(size string) corev1.Volume {
		ed := &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}
		if size != "" {
			q := resource.MustParse(size)
			ed.SizeLimit = &q
		}
		return corev1.Volume{Name: "shm", VolumeSource: corev1.VolumeSource{EmptyDir: ed}}
	}
	cases := []struct {
		name  string
		mut   func(*corev1.Pod)
		rules PodSpecRules
		rule  string // "" admitted
		want  string
	}{
		{"plain pod", func(p *corev1.Pod) {}, PodSpecRules{}, "", ""},
		{"probe without host", func(p *corev1.Pod) {
			p.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromInt32(80)}}}
		}, PodSpecRules{}, "", ""},
		{"liveness httpGet host", func(p *corev1.Pod) {
			p.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Host: "127.0.0.1", Port: intstr.FromInt32(10260)}}}
		}, PodSpecRules{}, RuleProbeHost, `container "main" of pod ns/p has a liveness probe httpGet with host "127.0.0.1"`},
		{"readiness tcpSocket host", func(p *corev1.Pod) {
			p.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Host: "localhost", Port: intstr.FromInt32(22)}}}
		}, PodSpecRules{}, RuleProbeHost, `readiness probe tcpSocket with host "localhost"`},
		{"init container startup probe", func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "side", StartupProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Host: "10.0.0.1"}}}}}
		}, PodSpecRules{}, RuleProbeHost, `container "side"`},
		{"preStop httpGet host", func(p *corev1.Pod) {
			p.Spec.Containers[0].Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{HTTPGet: &corev1.HTTPGetAction{Host: "127.0.0.1"}}}
		}, PodSpecRules{}, RuleProbeHost, "preStop handler httpGet"},
		{"postStart tcpSocket host", func(p *corev1.Pod) {
			p.Spec.Containers[0].Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{TCPSocket: &corev1.TCPSocketAction{Host: "127.0.0.1"}}}
		}, PodSpecRules{}, RuleProbeHost, "postStart handler tcpSocket"},
		{"probe host allowed", func(p *corev1.Pod) {
			p.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Host: "127.0.0.1"}}}
		}, PodSpecRules{AllowProbeHost: true}, "", ""},
		{"memory emptyDir, no limits", func(p *corev1.Pod) { p.Spec.Volumes = []corev1.Volume{memVol("")} },
			PodSpecRules{}, RuleUnboundedMemoryVolume, `emptyDir "shm" in memory`},
		{"memory emptyDir with sizeLimit", func(p *corev1.Pod) { p.Spec.Volumes = []corev1.Volume{memVol("64Mi")} }, PodSpecRules{}, "", ""},
		{"memory emptyDir, zero sizeLimit", func(p *corev1.Pod) { p.Spec.Volumes = []corev1.Volume{memVol("0")} },
			PodSpecRules{}, RuleUnboundedMemoryVolume, ""},
		{"memory emptyDir, every container limited", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{memVol("")}
			p.Spec.Containers[0].Resources = memLimit("128Mi")
		}, PodSpecRules{}, "", ""},
		{"memory emptyDir, an init container unlimited", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{memVol("")}
			p.Spec.Containers[0].Resources = memLimit("128Mi")
			p.Spec.InitContainers = []corev1.Container{{Name: "init"}}
		}, PodSpecRules{}, RuleUnboundedMemoryVolume, ""},
		{"memory emptyDir, pod-level limit", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{memVol("")}
			r := memLimit("256Mi")
			p.Spec.Resources = &r
		}, PodSpecRules{}, "", ""},
		{"disk emptyDir, no limits", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "d", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
		}, PodSpecRules{}, "", ""},
		{"unbounded allowed", func(p *corev1.Pod) { p.Spec.Volumes = []corev1.Volume{memVol("")} }, PodSpecRules{AllowUnboundedMemoryVolumes: true}, "", ""},
		// The device has 8Gi (below): a pod without a limit gets at most 2Gi.
		{"memory emptyDir 1Pi, no limits", func(p *corev1.Pod) { p.Spec.Volumes = []corev1.Volume{memVol("1Pi")} },
			PodSpecRules{}, RuleUnboundedMemoryVolume, `emptyDir "shm" in memory (medium: Memory) with sizeLimit 1Pi and no memory limit for the pod: above a quarter of the device's memory (2Gi)`},
		{"memory emptyDir at the cap", func(p *corev1.Pod) { p.Spec.Volumes = []corev1.Volume{memVol("2Gi")} }, PodSpecRules{}, "", ""},
		{"memory emptyDir above the pod's limit", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{memVol("1Pi")}
			p.Spec.Containers[0].Resources = memLimit("128Mi")
		}, PodSpecRules{}, RuleUnboundedMemoryVolume, "with sizeLimit 1Pi, above the pod's memory limit 128Mi"},
		{"memory emptyDir at the pod's limit, two containers", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{memVol("192Mi")}
			p.Spec.Containers[0].Resources = memLimit("128Mi")
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "b", Resources: memLimit("64Mi")})
		}, PodSpecRules{}, "", ""},
		{"memory emptyDir above the pod-level limit", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{memVol("1Gi")}
			r := memLimit("256Mi")
			p.Spec.Resources = &r
		}, PodSpecRules{}, RuleUnboundedMemoryVolume, "above the pod's memory limit 256Mi"},
		{"1Pi allowed", func(p *corev1.Pod) { p.Spec.Volumes = []corev1.Volume{memVol("1Pi")} }, PodSpecRules{AllowUnboundedMemoryVolumes: true}, "", ""},
	}
	defer func(f func() (int64, error)) { DeviceMemory = f }(DeviceMemory)
	DeviceMemory = func() (int64, error) { return 8 << 30, nil }
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.rules.CheckPodSpec(specPod(c.mut))
			if c.rule == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var v *Violation
			if !errors.As(err, &v) || v.Rule != c.rule {
				t.Fatalf("got %v, want rule %s", err, c.rule)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), v.Key+"=true") {
				t.Errorf("message %q lacks %q or the knob", err.Error(), c.want)
			}
		})
	}
}

func TestPodSpecConfigItems(t *testing.T) {
	p, errs := FromConfigItems(map[string]string{KeyAllowProbeHost: "true", KeyAllowUnboundedMemoryVolumes: "1"})
	if len(errs) > 0 || !p.AllowProbeHost || !p.AllowUnboundedMemoryVolumes {
		t.Fatalf("%+v %v", p.PodSpecRules, errs)
	}
	p, errs = FromConfigItems(map[string]string{KeyAllowProbeHost: "yes please"})
	if len(errs) != 1 || p.AllowProbeHost || !strings.Contains(errs[0].Error(), KeyAllowProbeHost) {
		t.Fatalf("bad value: %+v %v", p.PodSpecRules, errs)
	}
	if d := Default(); d.AllowProbeHost || d.AllowUnboundedMemoryVolumes {
		t.Fatalf("default allows spec-level dangers: %+v", d.PodSpecRules)
	}
}
