package cri_test

import (
	"context"
	"errors"
	"strings"
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
	"github.com/lf-edge/evelet/policy"
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

// probeHost gives the pod's container a liveness probe aimed at a port of
// the device (policy.RuleProbeHost refuses it).
func probeHost(p *corev1.Pod) {
	p.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
		TCPSocket: &corev1.TCPSocketAction{Host: "127.0.0.1", Port: intstr.FromInt32(10260)}}}
}

// newSpecEnv is a shim whose pods come from src, and a sandbox request
// for default/x, uid "u".
func newSpecEnv(t *testing.T) (*fakePods, *env, *runtimeapi.RunPodSandboxRequest) {
	src := &fakePods{}
	e := newEnvWith(t, func(c *cri.Config) { c.Pods = src })
	return src, e, &runtimeapi.RunPodSandboxRequest{Config: plainPod()}
}

func TestRunPodSandboxSpecLevelRules(t *testing.T) {
	src, e, req := newSpecEnv(t)

	src.pod = apiPod("u", probeHost)
	_, err := e.rt.RunPodSandbox(ctx(t), req)
	wantDenied(t, err, policy.RuleProbeHost)

	// In this order: "pod gone" makes the shim forget the pod read above,
	// so the apiserver error has nothing to fall back on (lastknown.go).
	for _, c := range []struct {
		name string
		src  fakePods
		code codes.Code
	}{
		{"pod gone", fakePods{}, codes.FailedPrecondition},
		{"apiserver error", fakePods{err: errors.New("connection refused")}, codes.Unavailable},
		{"another uid", fakePods{pod: apiPod("v", func(*corev1.Pod) {})}, codes.FailedPrecondition},
	} {
		name := c.name
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

// While the apiserver cannot be reached, a pod read before is checked as it
// was read: its sandbox can be recreated during an outage, and a spec the
// policy refuses is still refused. An apiserver that answers is believed.
func TestRunPodSandboxApiserverUnreachable(t *testing.T) {
	src, e, req := newSpecEnv(t)
	down := fakePods{err: errors.New(`Get "https://10.0.0.1:6443/api/v1/namespaces/default/pods/x": dial tcp 10.0.0.1:6443: connect: no route to host`)}
	run := func() error { _, err := e.rt.RunPodSandbox(ctx(t), req); return err }

	*src = down
	if err := run(); status.Code(err) != codes.Unavailable {
		t.Fatalf("never read, apiserver down: %v, want Unavailable", err)
	}
	*src = fakePods{pod: apiPod("u", func(*corev1.Pod) {})}
	if err := run(); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{down.err, apierrors.NewServiceUnavailable("etcd"), apierrors.NewTimeoutError("slow", 1)} {
		*src = fakePods{err: err}
		if err := run(); err != nil {
			t.Errorf("read before, then %v: %v, want the sandbox run", src.err, err)
		}
	}
	if n := e.fake.count("RunPodSandbox"); n != 4 {
		t.Errorf("backend ran %d sandboxes, want 4", n)
	}

	// The policy still judges the pod as read.
	*src = fakePods{pod: apiPod("u", probeHost)}
	wantDenied(t, run(), policy.RuleProbeHost)
	*src = down
	wantDenied(t, run(), policy.RuleProbeHost)

	// Answers are believed and forget the pod: forbidden, gone.
	for name, answer := range map[string]error{
		"forbidden": apierrors.NewForbidden(corev1.Resource("pods"), "x", errors.New("node is not allowed")),
		"gone":      apierrors.NewNotFound(corev1.Resource("pods"), "x"),
	} {
		*src = fakePods{pod: apiPod("u", func(*corev1.Pod) {})}
		if err := run(); err != nil {
			t.Fatal(err)
		}
		*src = fakePods{err: answer}
		if err := run(); err == nil {
			t.Errorf("%s: sandbox run", name)
		}
		*src = down
		if err := run(); status.Code(err) != codes.Unavailable {
			t.Errorf("%s, then apiserver down: %v, want Unavailable (nothing to fall back on)", name, err)
		}
	}

	// A pod of the same name read before, but another UID: not this sandbox.
	*src = fakePods{pod: apiPod("v", func(*corev1.Pod) {})}
	run()
	*src = down
	if err := run(); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "uid v") {
		t.Errorf("last read pod has another uid: %v, want FailedPrecondition naming uid v", err)
	}
}

// checkingBackend is a backend with its own pod rules (cri.PodChecker), as
// the VM backend is.
type checkingBackend struct {
	cri.Backend
	rule string
	seen *corev1.Pod
}

func (c *checkingBackend) CheckPod(p *corev1.Pod) error {
	c.seen = p
	return &policy.Violation{Rule: c.rule, Subject: "pod " + p.Namespace + "/" + p.Name, Detail: "is not for this backend"}
}

// TestRunPodSandboxBackendPodRules: the backend a RuntimeClass handler
// picks checks the pod as the apiserver has it, and its refusal reaches the
// kubelet as a named guardrail; another handler's pods are not its business.
func TestRunPodSandboxBackendPodRules(t *testing.T) {
	src := &fakePods{pod: apiPod("u", func(*corev1.Pod) {})}
	var chk *checkingBackend
	e := newEnvWith(t, func(c *cri.Config) {
		c.Pods = src
		chk = &checkingBackend{Backend: c.Backend, rule: "vm-test-rule"}
		c.Handlers = map[string]cri.Backend{"eve-vm": chk}
	})
	_, err := e.rt.RunPodSandbox(ctx(t), &runtimeapi.RunPodSandboxRequest{Config: plainPod(), RuntimeHandler: "eve-vm"})
	wantDenied(t, err, "vm-test-rule")
	if chk.seen == nil || chk.seen.UID != "u" {
		t.Errorf("the backend checked %v, want the apiserver's pod", chk.seen)
	}
	chk.seen = nil
	if _, err := e.rt.RunPodSandbox(ctx(t), &runtimeapi.RunPodSandboxRequest{Config: plainPod()}); err != nil {
		t.Errorf("a pod of the default handler: %v", err)
	}
	if chk.seen != nil {
		t.Error("the eve-vm backend checked a pod of the default handler")
	}
}

// kubectl debug --profile=sysadmin: the refusal names the privileged
// ephemeral container, not "a privileged sandbox".
func TestPrivilegedEphemeralContainerNamed(t *testing.T) {
	src, e, _ := newSpecEnv(t)
	src.pod = apiPod("u", func(p *corev1.Pod) {
		p.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debugger-x"}}}
	})
	req := hostRootContainer("sb-1")
	req.Config.Mounts = nil
	req.Config.Metadata.Name = "debugger-x"
	req.Config.Linux.SecurityContext.Privileged = true
	req.SandboxConfig.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{Privileged: true}}
	_, err := e.rt.CreateContainer(ctx(t), req)
	wantDenied(t, err, policy.RulePrivileged)
	if err == nil || !strings.Contains(err.Error(), `ephemeral container "debugger-x" of pod default/x asks for privileged mode`) {
		t.Errorf("got %v", err)
	}
}
