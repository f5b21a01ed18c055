package cri_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri"
	"github.com/lf-edge/evelet/policy"
)

func plainPod() *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "x", Namespace: "default", Uid: "u"}}
}

func privilegedPod() *runtimeapi.RunPodSandboxRequest {
	cfg := plainPod()
	cfg.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{Privileged: true}}
	return &runtimeapi.RunPodSandboxRequest{Config: cfg}
}

// hostRootContainer mounts the device's / into a container of sandbox id.
func hostRootContainer(id string) *runtimeapi.CreateContainerRequest {
	return &runtimeapi.CreateContainerRequest{
		PodSandboxId:  id,
		SandboxConfig: plainPod(),
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "main"},
			Mounts:   []*runtimeapi.Mount{{HostPath: "/", ContainerPath: "/host"}},
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				MaskedPaths: policy.BaselineMaskedPaths(), ReadonlyPaths: policy.BaselineReadonlyPaths()}},
		},
	}
}

func wantDenied(t *testing.T, err error, rule string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), `evelet guardrail "`+rule+`"`) {
		t.Errorf("got %v, want PermissionDenied for %s", err, rule)
	}
	if strings.Contains(st.Message(), "\n") {
		t.Errorf("message is not one line: %q", st.Message())
	}
}

func TestGuardrailsDefaultPolicy(t *testing.T) {
	e := newEnv(t)
	_, err := e.rt.RunPodSandbox(ctx(t), privilegedPod())
	wantDenied(t, err, policy.RulePrivileged)
	_, err = e.rt.CreateContainer(ctx(t), hostRootContainer("sb-1"))
	wantDenied(t, err, policy.RuleHostPath)
	if n := e.fake.total(); n != 0 {
		t.Errorf("refused requests reached the backend: %d calls", n)
	}
	// Ordinary requests still pass.
	if _, err := e.rt.RunPodSandbox(ctx(t), &runtimeapi.RunPodSandboxRequest{Config: plainPod()}); err != nil {
		t.Errorf("plain pod: %v", err)
	}
}

func TestGuardrailsNotBeforeRouting(t *testing.T) {
	// With a second backend, routing CreateContainer asks the backends who
	// owns the sandbox; a refused container must not even cause that.
	tb := newTwoBackends(t)
	_, err := tb.rt.CreateContainer(ctx(t), hostRootContainer("sb-vm"))
	wantDenied(t, err, policy.RuleHostPath)
	if tb.ctd.total()+tb.vm.total() != 0 {
		t.Errorf("backends saw %d + %d calls", tb.ctd.total(), tb.vm.total())
	}
	req := privilegedPod()
	req.RuntimeHandler = "eve-vm"
	_, err = tb.rt.RunPodSandbox(ctx(t), req)
	wantDenied(t, err, policy.RulePrivileged)
}

func TestSetPolicy(t *testing.T) {
	p := policy.Policy{AllowPrivileged: true}
	e := newEnvWith(t, func(c *cri.Config) { c.Policy = &p })
	p.AllowPrivileged = false // the server holds its own copy
	if _, err := e.rt.RunPodSandbox(ctx(t), privilegedPod()); err != nil {
		t.Fatalf("allowed by Config.Policy, refused: %v", err)
	}
	if !e.srv.Policy().AllowPrivileged {
		t.Error("Policy() does not return the configured policy")
	}

	e.srv.SetPolicy(policy.Default())
	_, err := e.rt.RunPodSandbox(ctx(t), privilegedPod())
	wantDenied(t, err, policy.RulePrivileged)

	allowed, errs := policy.FromConfigItems(map[string]string{policy.KeyAllowedHostPaths: "/"})
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	e.srv.SetPolicy(allowed)
	allowed.AllowedHostPaths[0] = "/nothing" // SetPolicy copied the list
	srv := hostRootContainer("sb-1")
	srv.Config.Mounts[0].HostPath = "/srv/evelet-test-data"
	if _, err := e.rt.CreateContainer(ctx(t), srv); err != nil {
		t.Errorf("allowed-host-paths=/ still refuses /srv/evelet-test-data: %v", err)
	}
	// "/" holds the kubelet's and containerd's directories: no knob opens it.
	_, err = e.rt.CreateContainer(ctx(t), hostRootContainer("sb-1"))
	wantDenied(t, err, policy.RuleHostPath)
	if err == nil || !strings.Contains(err.Error(), "no config item can allow this") {
		t.Errorf("allowed-host-paths=/ admits / or advises a knob: %v", err)
	}
	if got := e.fake.count("CreateContainer"); got != 1 {
		t.Errorf("backend saw %d CreateContainer", got)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	e := newEnvWith(t, func(c *cri.Config) { c.Metrics = reg })
	for range 3 {
		if _, err := e.rt.ListContainers(ctx(t), &runtimeapi.ListContainersRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.im.ImageFsInfo(ctx(t), &runtimeapi.ImageFsInfoRequest{}); err != nil {
		t.Fatal(err)
	}
	e.fake.setErr("ContainerStatus", status.Error(codes.NotFound, "no such container"))
	e.rt.ContainerStatus(ctx(t), &runtimeapi.ContainerStatusRequest{ContainerId: "gone"})
	e.rt.RunPodSandbox(ctx(t), privilegedPod())

	// A second server on the same registry (the agent restarts it) works
	// and shares the counters.
	sock2 := filepath.Join(shortDir(t), "cri2.sock")
	startServer(t, cri.Config{Socket: sock2, Backend: dialBackend(t, e.fakeSock), Log: quietLog(), Metrics: reg})
	rt2 := runtimeapi.NewRuntimeServiceClient(dialClient(t, sock2))
	rt2.RunPodSandbox(ctx(t), privilegedPod())

	want := `
# HELP evelet_cri_policy_rejections_total RunPodSandbox and CreateContainer calls refused by the EVE guardrail policy, by rule.
# TYPE evelet_cri_policy_rejections_total counter
evelet_cri_policy_rejections_total{rule="no-devices"} 0
evelet_cri_policy_rejections_total{rule="no-extra-capabilities"} 0
evelet_cri_policy_rejections_total{rule="no-host-ipc"} 0
evelet_cri_policy_rejections_total{rule="no-host-network"} 0
evelet_cri_policy_rejections_total{rule="no-host-path"} 0
evelet_cri_policy_rejections_total{rule="no-host-pid"} 0
evelet_cri_policy_rejections_total{rule="no-host-ports"} 0
evelet_cri_policy_rejections_total{rule="no-host-volume-plugins"} 0
evelet_cri_policy_rejections_total{rule="no-image-volumes"} 0
evelet_cri_policy_rejections_total{rule="no-privileged"} 2
evelet_cri_policy_rejections_total{rule="no-probe-host"} 0
evelet_cri_policy_rejections_total{rule="no-unbounded-memory-volume"} 0
evelet_cri_policy_rejections_total{rule="no-unconfined-seccomp"} 0
evelet_cri_policy_rejections_total{rule="no-unmasked-proc"} 0
evelet_cri_policy_rejections_total{rule="no-unsafe-sysctls"} 0
# HELP evelet_cri_requests_total CRI calls served, by method, the backend that answered and the gRPC status code.
# TYPE evelet_cri_requests_total counter
evelet_cri_requests_total{backend="containerd",code="NotFound",method="ContainerStatus"} 1
evelet_cri_requests_total{backend="containerd",code="OK",method="ImageFsInfo"} 1
evelet_cri_requests_total{backend="containerd",code="OK",method="ListContainers"} 3
evelet_cri_requests_total{backend="none",code="PermissionDenied",method="RunPodSandbox"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "evelet_cri_requests_total", "evelet_cri_policy_rejections_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, "evelet_cri_request_duration_seconds"); n != 4 {
		t.Errorf("%d duration series, want 4 (method x backend)", n)
	}
}

func TestMetricsEventStream(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnvWith(t, func(c *cri.Config) { c.Metrics = reg })
	stream, err := e.rt.GetContainerEvents(ctx(t), &runtimeapi.GetEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			break
		}
	}
	e.stop()
	if got := requestCount(t, reg, "GetContainerEvents"); got != 1 {
		t.Errorf("GetContainerEvents counted %v times", got)
	}
}

// requestCount sums evelet_cri_requests_total for a method.
func requestCount(t *testing.T, reg *prometheus.Registry, method string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "evelet_cri_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "method" && l.GetValue() == method {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}
