package cri_test

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri"
	"github.com/lf-edge/evelet/cri/policy"
)

// fakePods answers with one pod, or an error.
type fakePods struct {
	pod *corev1.Pod
	err error
}

func (f *fakePods) Pod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	if f.err != nil {
		return nil, f.err
	}
	if f.pod == nil || f.pod.Namespace != ns || f.pod.Name != name {
		return nil, apierrors.NewNotFound(corev1.Resource("pods"), name)
	}
	return f.pod, nil
}

func apiPod(uid string, mut func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "x", UID: types.UID(uid)},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "main"}}},
	}
	mut(p)
	return p
}

func TestRunPodSandboxSpecLevelRules(t *testing.T) {
	probeHost := func(p *corev1.Pod) {
		p.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
			TCPSocket: &corev1.TCPSocketAction{Host: "127.0.0.1", Port: intstr.FromInt32(10260)}}}
	}
	src := &fakePods{}
	e := newEnvWith(t, func(c *cri.Config) { c.Pods = src })
	req := &runtimeapi.RunPodSandboxRequest{Config: plainPod()} // default/x, uid "u"

	src.pod = apiPod("u", probeHost)
	_, err := e.rt.RunPodSandbox(ctx(t), req)
	wantDenied(t, err, policy.RuleProbeHost)

	for name, c := range map[string]struct {
		src  fakePods
		code codes.Code
	}{
		"pod gone":        {fakePods{}, codes.FailedPrecondition},
		"another uid":     {fakePods{pod: apiPod("v", func(*corev1.Pod) {})}, codes.FailedPrecondition},
		"apiserver error": {fakePods{err: errors.New("connection refused")}, codes.Unavailable},
	} {
		*src = c.src
		if _, err := e.rt.RunPodSandbox(ctx(t), req); status.Code(err) != c.code {
			t.Errorf("%s: got %v, want %s", name, err, c.code)
		}
	}
	if n := e.fake.total(); n != 0 {
		t.Fatalf("refused sandboxes reached the backend: %d calls", n)
	}

	*src = fakePods{pod: apiPod("u", func(*corev1.Pod) {})}
	if _, err := e.rt.RunPodSandbox(ctx(t), req); err != nil {
		t.Fatalf("plain pod: %v", err)
	}
	// The owner's knob lets the probe through, from the next call on.
	*src = fakePods{pod: apiPod("u", probeHost)}
	p := policy.Default()
	p.AllowProbeHost = true
	e.srv.SetPolicy(p)
	if _, err := e.rt.RunPodSandbox(ctx(t), req); err != nil {
		t.Fatalf("probe host allowed: %v", err)
	}
}
