package cri_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri"
	"github.com/lf-edge/evelet/policy"
)

// benchEnv returns a client straight to the fake backend and one through
// evelet, with logging at info (the production default) so the interceptor
// costs what it costs in the field.
func benchEnv(b *testing.B) (direct, shim runtimeapi.RuntimeServiceClient) {
	return benchEnvWith(b, nil)
}

// benchEnvWith is benchEnv with the server's Config adjusted by mod.
func benchEnvWith(b *testing.B, mod func(*cri.Config)) (direct, shim runtimeapi.RuntimeServiceClient) {
	f := newFake()
	fakeSock, _ := serveFake(b, f)
	l := logrus.New()
	l.SetOutput(io.Discard)
	sock := filepath.Join(shortDir(b), "cri.sock")
	cfg := cri.Config{Socket: sock, Backend: dialBackend(b, fakeSock), Log: logrus.NewEntry(l)}
	if mod != nil {
		mod(&cfg)
	}
	startServer(b, cfg)
	return runtimeapi.NewRuntimeServiceClient(dialClient(b, fakeSock)),
		runtimeapi.NewRuntimeServiceClient(dialClient(b, sock))
}

func benchCall(b *testing.B, direct, shim runtimeapi.RuntimeServiceClient, call func(context.Context, runtimeapi.RuntimeServiceClient) error) {
	for _, bc := range []struct {
		name string
		c    runtimeapi.RuntimeServiceClient
	}{{"direct", direct}, {"evelet", shim}} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			if err := call(ctx, bc.c); err != nil { // connect outside the timing
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := call(ctx, bc.c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Version through evelet costs two hops: evelet answers but checks the backend.
func BenchmarkVersionDirectVsShim(b *testing.B) {
	direct, shim := benchEnv(b)
	benchCall(b, direct, shim, func(ctx context.Context, c runtimeapi.RuntimeServiceClient) error {
		_, err := c.Version(ctx, &runtimeapi.VersionRequest{})
		return err
	})
}

// ListContainers is the kubelet's most frequent call (every PLEG relist).
func BenchmarkListContainers(b *testing.B) {
	direct, shim := benchEnv(b)
	benchCall(b, direct, shim, func(ctx context.Context, c runtimeapi.RuntimeServiceClient) error {
		_, err := c.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
		return err
	})
}

// With metrics on, as the agent runs the shim: the interceptor's share.
func BenchmarkListContainersWithMetrics(b *testing.B) {
	direct, shim := benchEnvWith(b, func(c *cri.Config) { c.Metrics = prometheus.NewRegistry() })
	benchCall(b, direct, shim, func(ctx context.Context, c runtimeapi.RuntimeServiceClient) error {
		_, err := c.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
		return err
	})
}

// CreateContainer pays for the guardrail check (here: a kubelet-shaped
// container with two mounts under the kubelet's pod directory).
func BenchmarkCreateContainerPolicy(b *testing.B) {
	root := b.TempDir()
	p := policy.Default()
	p.KubeletRootDir = root
	// The kubelet's files for the pod: the policy opens them.
	os.MkdirAll(filepath.Join(root, "pods", "u1", "volumes", "kubernetes.io~empty-dir", "data"), 0o750)
	os.WriteFile(filepath.Join(root, "pods", "u1", "etc-hosts"), nil, 0o644)
	direct, shim := benchEnvWith(b, func(c *cri.Config) { c.Policy = &p })
	sb := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "x", Namespace: "default", Uid: "u1"}}
	req := &runtimeapi.CreateContainerRequest{PodSandboxId: "sb-1", SandboxConfig: sb, Config: &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "main"},
		Mounts: []*runtimeapi.Mount{
			{ContainerPath: "/etc/hosts", HostPath: filepath.Join(root, "pods", "u1", "etc-hosts")},
			{ContainerPath: "/data", HostPath: filepath.Join(root, "pods", "u1", "volumes", "kubernetes.io~empty-dir", "data")},
		},
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			MaskedPaths: policy.BaselineMaskedPaths(), ReadonlyPaths: policy.BaselineReadonlyPaths()}},
	}}
	benchCall(b, direct, shim, func(ctx context.Context, c runtimeapi.RuntimeServiceClient) error {
		_, err := c.CreateContainer(ctx, req)
		return err
	})
}
