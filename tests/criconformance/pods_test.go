package criconformance

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var podSeq atomic.Int32

// newPod names a fresh pod and prepares its directories for containers.
func newPod(tb testing.TB, name string, containers ...string) Pod {
	tb.Helper()
	n := podSeq.Add(1)
	p := Pod{
		Namespace: namespace, Name: fmt.Sprintf("%s-%d", name, n),
		UID:         fmt.Sprintf("%08x-%04x-4000-8000-%012x", os.Getpid(), n, time.Now().UnixNano()&0xffffffffffff),
		KubeletRoot: env.kubeletRoot, PodLogsDir: env.podLogs,
	}
	if err := p.Prepare(containers...); err != nil {
		tb.Fatal(err)
	}
	return p
}

// runSandbox starts cfg through evelet (the kubelet's client) and removes
// it, straight from containerd, when the test ends.
func runSandbox(tb testing.TB, cfg *runtimeapi.PodSandboxConfig) string {
	tb.Helper()
	id, err := env.rs.RunPodSandbox(ctx(tb), cfg, "")
	if err != nil {
		tb.Fatalf("RunPodSandbox %s: %v", cfg.GetMetadata().GetName(), err)
	}
	tb.Cleanup(func() { removeSandbox(id) })
	return id
}

func removeSandbox(id string) {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	env.direct.StopPodSandbox(c, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id})
	env.direct.RemovePodSandbox(c, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id})
}

// running is a pod with its sandbox started.
type running struct {
	Pod
	id  string
	cfg *runtimeapi.PodSandboxConfig
}

func startSandbox(tb testing.TB, name string, containers ...string) running {
	tb.Helper()
	p := newPod(tb, name, containers...)
	cfg := p.SandboxConfig()
	return running{Pod: p, id: runSandbox(tb, cfg), cfg: cfg}
}

// create creates a container in the pod through evelet.
func (r running) create(tb testing.TB, cfg *runtimeapi.ContainerConfig) string {
	tb.Helper()
	id, err := env.rs.CreateContainer(ctx(tb), r.id, cfg, r.cfg)
	if err != nil {
		tb.Fatalf("CreateContainer %s: %v", cfg.GetMetadata().GetName(), err)
	}
	return id
}

// start creates and starts a busybox container running script.
func (r running) start(tb testing.TB, name, script string) string {
	tb.Helper()
	id := r.create(tb, r.Container(name, "sh", "-c", script))
	if err := env.rs.StartContainer(ctx(tb), id); err != nil {
		tb.Fatalf("StartContainer %s: %v", name, err)
	}
	return id
}

// startPod is a sandbox with one running container, "main".
func startPod(tb testing.TB, name, script string) (running, string) {
	tb.Helper()
	r := startSandbox(tb, name, "main")
	return r, r.start(tb, "main", script)
}

func waitFor(tb testing.TB, what string, timeout time.Duration, cond func() (bool, string)) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s; last: %s", timeout, what, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitContainer(tb testing.TB, id string, want runtimeapi.ContainerState) *runtimeapi.ContainerStatus {
	tb.Helper()
	var st *runtimeapi.ContainerStatus
	waitFor(tb, fmt.Sprintf("container %.12s %v", id, want), 30*time.Second, func() (bool, string) {
		resp, err := env.rs.ContainerStatus(ctx(tb), id, false)
		if err != nil {
			return false, err.Error()
		}
		st = resp.GetStatus()
		return st.GetState() == want, st.GetState().String()
	})
	return st
}

// sandboxIDs lists the sandboxes containerd itself knows.
func sandboxIDs(tb testing.TB) map[string]bool {
	tb.Helper()
	resp, err := env.direct.ListPodSandbox(ctx(tb), &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		tb.Fatal(err)
	}
	ids := map[string]bool{}
	for _, sb := range resp.GetItems() {
		ids[sb.GetId()] = true
	}
	return ids
}

// containerIDs lists the containers containerd itself knows.
func containerIDs(tb testing.TB) map[string]bool {
	tb.Helper()
	resp, err := env.direct.ListContainers(ctx(tb), &runtimeapi.ListContainersRequest{})
	if err != nil {
		tb.Fatal(err)
	}
	ids := map[string]bool{}
	for _, c := range resp.GetContainers() {
		ids[c.GetId()] = true
	}
	return ids
}

func sandboxIDList(sbs []*runtimeapi.PodSandbox) []string {
	var out []string
	for _, s := range sbs {
		out = append(out, s.GetId()[:12])
	}
	return out
}

func containerIDList(cs []*runtimeapi.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.GetId()[:12]+"/"+c.GetMetadata().GetName())
	}
	return out
}

func short(id string) string { return id[:min(12, len(id))] }

func joinLines(b []byte) string { return strings.TrimSpace(string(b)) }
