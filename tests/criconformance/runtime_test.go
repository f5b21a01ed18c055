package criconformance

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	utilexec "k8s.io/utils/exec"

	"github.com/lf-edge/evelet/policy"
	"github.com/lf-edge/evelet/version"
)

func TestVersionAndStatus(t *testing.T) {
	needEnv(t)
	v, err := env.rs.Version(ctx(t), "v1")
	if err != nil {
		t.Fatal(err)
	}
	if v.RuntimeName != "evelet" || v.RuntimeVersion != version.Version || v.RuntimeApiVersion != "v1" {
		t.Errorf("Version = %v", v)
	}
	st, err := env.rs.Status(ctx(t), true)
	if err != nil {
		t.Fatal(err)
	}
	for _, cond := range []string{runtimeapi.RuntimeReady, runtimeapi.NetworkReady} {
		ok := false
		for _, c := range st.GetStatus().GetConditions() {
			ok = ok || c.GetType() == cond && c.GetStatus()
		}
		if !ok {
			t.Errorf("%s not true: %v", cond, st.GetStatus())
		}
	}
	if len(st.GetInfo()) == 0 {
		t.Error("verbose Status has no info")
	}
	// The kubelet sends the node's pod CIDR once it knows it.
	if err := env.rs.UpdateRuntimeConfig(ctx(t), &runtimeapi.RuntimeConfig{NetworkConfig: &runtimeapi.NetworkConfig{PodCidr: podCIDR}}); err != nil {
		t.Errorf("UpdateRuntimeConfig: %v", err)
	}
	// Newer RPCs that containerd 1.6 may not have: evelet must give the
	// kubelet exactly containerd's answer (Unimplemented makes it fall back).
	sameAsDirect(t, "RuntimeConfig",
		func() error {
			_, err := env.direct.RuntimeConfig(ctx(t), &runtimeapi.RuntimeConfigRequest{})
			return err
		},
		func() error { _, err := env.rs.RuntimeConfig(ctx(t)); return err })
	sameAsDirect(t, "ListMetricDescriptors",
		func() error {
			_, err := env.direct.ListMetricDescriptors(ctx(t), &runtimeapi.ListMetricDescriptorsRequest{})
			return err
		},
		func() error { _, err := env.rs.ListMetricDescriptors(ctx(t)); return err })
	sameAsDirect(t, "ListPodSandboxMetrics",
		func() error {
			_, err := env.direct.ListPodSandboxMetrics(ctx(t), &runtimeapi.ListPodSandboxMetricsRequest{})
			return err
		},
		func() error { _, err := env.rs.ListPodSandboxMetrics(ctx(t)); return err })
}

// sameAsDirect checks that a call gets the same gRPC code from containerd
// and through evelet.
func sameAsDirect(t *testing.T, what string, direct, shim func() error) {
	t.Helper()
	d, s := direct(), shim()
	if status.Code(d) != status.Code(s) {
		t.Errorf("%s: containerd says %v, evelet says %v", what, d, s)
	} else if d != nil {
		t.Logf("%s: %v from containerd and evelet alike", what, status.Code(d))
	}
}

func TestPodSandboxLifecycle(t *testing.T) {
	needEnv(t)
	a := startSandbox(t, "sb-a")
	b := startSandbox(t, "sb-b")

	st, err := env.rs.PodSandboxStatus(ctx(t), a.id, true)
	if err != nil {
		t.Fatal(err)
	}
	s := st.GetStatus()
	if s.GetState() != runtimeapi.PodSandboxState_SANDBOX_READY || s.GetMetadata().GetUid() != a.UID ||
		s.GetLabels()["app"] != a.Name || s.GetLinux().GetNamespaces().GetOptions().GetNetwork() != runtimeapi.NamespaceMode_POD {
		t.Errorf("PodSandboxStatus = %v", s)
	}
	_, cidr, _ := net.ParseCIDR(podCIDR)
	if ip := net.ParseIP(s.GetNetwork().GetIp()); ip == nil || !cidr.Contains(ip) {
		t.Errorf("pod IP %q not in %s", s.GetNetwork().GetIp(), podCIDR)
	}
	if st.GetInfo()["info"] == "" {
		t.Error("verbose PodSandboxStatus has no info")
	}

	list := func(f *runtimeapi.PodSandboxFilter) []string {
		t.Helper()
		items, err := env.rs.ListPodSandbox(ctx(t), f)
		if err != nil {
			t.Fatalf("ListPodSandbox(%v): %v", f, err)
		}
		var ids []string
		for _, it := range items {
			if it.GetId() == a.id || it.GetId() == b.id {
				ids = append(ids, it.GetId())
			}
		}
		return ids
	}
	ready := &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY}
	notReady := &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_NOTREADY}
	checks := []struct {
		name string
		f    *runtimeapi.PodSandboxFilter
		want []string
	}{
		{"no filter", nil, []string{a.id, b.id}},
		{"id", &runtimeapi.PodSandboxFilter{Id: a.id}, []string{a.id}},
		{"id prefix", &runtimeapi.PodSandboxFilter{Id: a.id[:12]}, []string{a.id}},
		{"state", &runtimeapi.PodSandboxFilter{State: ready}, []string{a.id, b.id}},
		{"label", &runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{"app": b.Name}}, []string{b.id}},
		{"label and id", &runtimeapi.PodSandboxFilter{Id: a.id, LabelSelector: map[string]string{"app": b.Name}}, nil},
	}
	for _, c := range checks {
		if got := list(c.f); !sameSet(got, c.want) {
			t.Errorf("ListPodSandbox %s: %v, want %v", c.name, got, c.want)
		}
	}

	if err := env.rs.StopPodSandbox(ctx(t), b.id); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if got := list(&runtimeapi.PodSandboxFilter{State: notReady}); !sameSet(got, []string{b.id}) {
		t.Errorf("NOTREADY after stop: %v, want b", got)
	}
	if got := list(&runtimeapi.PodSandboxFilter{State: ready}); !sameSet(got, []string{a.id}) {
		t.Errorf("READY after stop: %v, want a", got)
	}
	if err := env.rs.StopPodSandbox(ctx(t), b.id); err != nil {
		t.Errorf("second StopPodSandbox: %v", err)
	}
	if err := env.rs.RemovePodSandbox(ctx(t), b.id); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	if _, err := env.rs.PodSandboxStatus(ctx(t), b.id, false); status.Code(err) != codes.NotFound {
		t.Errorf("status of a removed sandbox: %v, want NotFound", err)
	}
	if err := env.rs.RemovePodSandbox(ctx(t), b.id); err != nil {
		t.Errorf("RemovePodSandbox is not idempotent: %v", err)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func TestContainerLifecycle(t *testing.T) {
	needEnv(t)
	r := startSandbox(t, "ctrs", "main", "side")
	mainID := r.create(t, r.Container("main", "sh", "-c", "echo started; exec sleep 3600"))
	st, err := env.rs.ContainerStatus(ctx(t), mainID, true)
	if err != nil {
		t.Fatal(err)
	}
	if st.GetStatus().GetState() != runtimeapi.ContainerState_CONTAINER_CREATED || st.GetStatus().GetMetadata().GetName() != "main" {
		t.Errorf("after CreateContainer: %v", st.GetStatus())
	}
	if err := env.rs.StartContainer(ctx(t), mainID); err != nil {
		t.Fatal(err)
	}
	waitContainer(t, mainID, runtimeapi.ContainerState_CONTAINER_RUNNING)
	sideID := r.start(t, "side", "exit 3")
	side := waitContainer(t, sideID, runtimeapi.ContainerState_CONTAINER_EXITED)
	if side.GetExitCode() != 3 {
		t.Errorf("side exited with %d, want 3", side.GetExitCode())
	}
	if got := side.GetLogPath(); got != filepath.Join(r.LogDir(), "side", "0.log") {
		t.Errorf("log path %q", got)
	}

	list := func(f *runtimeapi.ContainerFilter) []string {
		t.Helper()
		cs, err := env.rs.ListContainers(ctx(t), f)
		if err != nil {
			t.Fatalf("ListContainers(%v): %v", f, err)
		}
		var ids []string
		for _, c := range cs {
			if c.GetPodSandboxId() == r.id {
				ids = append(ids, c.GetId())
			}
		}
		return ids
	}
	state := func(s runtimeapi.ContainerState) *runtimeapi.ContainerStateValue {
		return &runtimeapi.ContainerStateValue{State: s}
	}
	checks := []struct {
		name string
		f    *runtimeapi.ContainerFilter
		want []string
	}{
		{"no filter", nil, []string{mainID, sideID}},
		{"id", &runtimeapi.ContainerFilter{Id: sideID}, []string{sideID}},
		{"sandbox", &runtimeapi.ContainerFilter{PodSandboxId: r.id}, []string{mainID, sideID}},
		{"running", &runtimeapi.ContainerFilter{State: state(runtimeapi.ContainerState_CONTAINER_RUNNING)}, []string{mainID}},
		{"exited", &runtimeapi.ContainerFilter{State: state(runtimeapi.ContainerState_CONTAINER_EXITED)}, []string{sideID}},
		{"label", &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"io.kubernetes.container.name": "main"}}, []string{mainID}},
		{"sandbox and state", &runtimeapi.ContainerFilter{PodSandboxId: r.id, State: state(runtimeapi.ContainerState_CONTAINER_CREATED)}, nil},
	}
	for _, c := range checks {
		if got := list(c.f); !sameSet(got, c.want) {
			t.Errorf("ListContainers %s: %v, want %v", c.name, got, c.want)
		}
	}

	// ExecSync: output, exit codes, the kubelet's mounts in place.
	out, _, err := env.rs.ExecSync(ctx(t), mainID, []string{"echo", "hi"}, 10*time.Second)
	if err != nil || string(out) != "hi\n" {
		t.Errorf("ExecSync echo hi: %q, %v", out, err)
	}
	out, errOut, err := env.rs.ExecSync(ctx(t), mainID, []string{"sh", "-c", "echo out; echo err >&2; exit 7"}, 10*time.Second)
	var exit utilexec.ExitError
	if !errors.As(err, &exit) || exit.ExitStatus() != 7 || string(out) != "out\n" || string(errOut) != "err\n" {
		t.Errorf("ExecSync exit 7: stdout %q stderr %q err %v", out, errOut, err)
	}
	out, _, err = env.rs.ExecSync(ctx(t), mainID, []string{"cat", "/etc/hosts"}, 10*time.Second)
	if err != nil || !strings.Contains(string(out), r.Name) {
		t.Errorf("/etc/hosts from the pod directory: %q, %v", out, err)
	}
	checkProcMasked(t, mainID)

	if err := env.rs.StopContainer(ctx(t), mainID, 2); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	if st := waitContainer(t, mainID, runtimeapi.ContainerState_CONTAINER_EXITED); st.GetFinishedAt() == 0 {
		t.Errorf("stopped container has no finish time: %v", st)
	}
	if err := env.rs.RemoveContainer(ctx(t), mainID); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	if _, err := env.rs.ContainerStatus(ctx(t), mainID, false); status.Code(err) != codes.NotFound {
		t.Errorf("status of a removed container: %v, want NotFound", err)
	}
	if err := env.rs.RemoveContainer(ctx(t), mainID); err != nil {
		t.Errorf("RemoveContainer is not idempotent: %v", err)
	}
	if got := list(nil); !sameSet(got, []string{sideID}) {
		t.Errorf("after remove: %v, want only side", got)
	}
}

// TestNoMaskedPathsMeansUnmaskedProc pins why the no-unmasked-proc
// guardrail refuses a container sent without masked paths (no security
// context at all, as crictl may send it): containerd then masks nothing.
func TestNoMaskedPathsMeansUnmaskedProc(t *testing.T) {
	needEnv(t)
	r := startSandbox(t, "nosc", "main")
	cfg := r.Container("main", "sleep", "3600")
	cfg.Linux = nil
	before := containerIDs(t)
	_, err := env.rs.CreateContainer(ctx(t), r.id, cfg, r.cfg)
	wantRefused(t, err, policy.RuleUnmaskedProc)
	if after := containerIDs(t); len(after) != len(before) {
		t.Errorf("a refused container reached containerd")
	}
	// Straight to containerd, as the guardrail prevents.
	resp, err := env.direct.CreateContainer(ctx(t), &runtimeapi.CreateContainerRequest{PodSandboxId: r.id, Config: cfg, SandboxConfig: r.cfg})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetContainerId()
	if _, err := env.direct.StartContainer(ctx(t), &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	waitContainer(t, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
	if masked := procMounts(t, id); len(masked) != 0 {
		t.Errorf("containerd masked %v without masked paths; the guardrail could admit such requests", masked)
	}
}

// procMounts returns which of the runtime's default masked and read-only
// /proc and /sys paths are mounted over in the container, and which exist on
// this kernel (runc skips missing ones).
func procMounts(t *testing.T, id string) (mounted []string) {
	t.Helper()
	out, _, err := env.rs.ExecSync(ctx(t), id, []string{"cat", "/proc/self/mountinfo"}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	points := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 4 {
			points[f[4]] = true
		}
	}
	for _, p := range procPaths(t) {
		if points[p] {
			mounted = append(mounted, p)
		}
	}
	return mounted
}

func procPaths(t *testing.T) []string {
	var exist []string
	for _, p := range append(policy.BaselineMaskedPaths(), policy.BaselineReadonlyPaths()...) {
		if _, err := os.Stat(p); err == nil {
			exist = append(exist, p)
		}
	}
	if len(exist) == 0 {
		t.Fatal("none of the masked /proc paths exists on this kernel")
	}
	return exist
}

// checkProcMasked checks that every default masked or read-only path that
// this kernel has is mounted over in the container.
func checkProcMasked(t *testing.T, id string) {
	t.Helper()
	if got, want := procMounts(t, id), procPaths(t); !slices.Equal(got, want) {
		t.Errorf("masked or read-only in the container: %v, want %v", got, want)
	}
}

func TestUpdateContainerResources(t *testing.T) {
	needEnv(t)
	_, id := startPod(t, "resources", "exec sleep 3600")
	waitContainer(t, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
	const limit = 64 << 20
	err := env.rs.UpdateContainerResources(ctx(t), id, &runtimeapi.ContainerResources{
		Linux: &runtimeapi.LinuxContainerResources{CpuShares: 256, MemoryLimitInBytes: limit, OomScoreAdj: 1000},
	})
	if err != nil {
		t.Fatalf("UpdateContainerResources: %v", err)
	}
	out, _, err := env.rs.ExecSync(ctx(t), id, []string{"sh", "-c",
		"cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max"}, 10*time.Second)
	if err != nil || joinLines(out) != "67108864" {
		t.Errorf("memory limit seen in the container: %q, %v; want 67108864", out, err)
	}
	if _, err := env.rs.ContainerStatus(ctx(t), "no-such-container", false); status.Code(err) != codes.NotFound {
		t.Errorf("ContainerStatus of a missing container: %v", err)
	}
}

func TestReopenContainerLog(t *testing.T) {
	needEnv(t)
	r, id := startPod(t, "logs", "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.1; done")
	logPath := filepath.Join(r.LogDir(), "main", "0.log")
	hasLines := func(p string) func() (bool, string) {
		return func() (bool, string) {
			b, err := os.ReadFile(p)
			if err != nil {
				return false, err.Error()
			}
			// The CRI log format: "<RFC3339Nano> stdout F line3".
			return bytes.Contains(b, []byte(" stdout F line")), string(b[:min(len(b), 200)])
		}
	}
	waitFor(t, "log lines", 20*time.Second, hasLines(logPath))
	rotated := logPath + ".20250101-000000"
	if err := os.Rename(logPath, rotated); err != nil {
		t.Fatal(err)
	}
	if err := env.rs.ReopenContainerLog(ctx(t), id); err != nil {
		t.Fatalf("ReopenContainerLog: %v", err)
	}
	// The container numbers its lines. Once the reopened log holds ten
	// lines, any line the runtime still wrote to the rotated file would be
	// numbered at or after the reopened log's first line.
	var first int
	waitFor(t, "ten lines in the reopened log", time.Minute, func() (bool, string) {
		b, _ := os.ReadFile(logPath)
		n := lineNumbers(b)
		if len(n) < 10 {
			return false, fmt.Sprintf("%d lines", len(n))
		}
		first = n[0]
		return true, ""
	})
	old, _ := os.ReadFile(rotated)
	if n := lineNumbers(old); len(n) == 0 || n[len(n)-1] >= first {
		t.Errorf("rotated log has lines %v, the reopened one starts at line%d: the runtime still wrote to the rotated file", n, first)
	}
	// A stopped container's log cannot be reopened; containerd says so.
	if err := env.rs.StopContainer(ctx(t), id, 0); err != nil {
		t.Fatal(err)
	}
	if err := env.rs.ReopenContainerLog(ctx(t), id); err == nil {
		t.Error("ReopenContainerLog of a stopped container succeeded")
	}
}

func TestStats(t *testing.T) {
	needEnv(t)
	r, id := startPod(t, "stats", "exec sleep 3600")
	waitContainer(t, id, runtimeapi.ContainerState_CONTAINER_RUNNING)

	cs, err := env.rs.ContainerStats(ctx(t), id)
	if err != nil {
		t.Fatalf("ContainerStats: %v", err)
	}
	if cs.GetAttributes().GetId() != id || cs.GetMemory() == nil || cs.GetCpu() == nil || cs.GetWritableLayer() == nil {
		t.Errorf("ContainerStats = %v", cs)
	}
	all, err := env.rs.ListContainerStats(ctx(t), &runtimeapi.ContainerStatsFilter{PodSandboxId: r.id})
	if err != nil || len(all) != 1 || all[0].GetAttributes().GetId() != id {
		t.Errorf("ListContainerStats by sandbox = %v, %v", all, err)
	}
	all, err = env.rs.ListContainerStats(ctx(t), &runtimeapi.ContainerStatsFilter{LabelSelector: map[string]string{"app": r.Name}})
	if err != nil || len(all) != 1 {
		t.Errorf("ListContainerStats by label = %v, %v", all, err)
	}

	directErr := func() error {
		_, err := env.direct.PodSandboxStats(ctx(t), &runtimeapi.PodSandboxStatsRequest{PodSandboxId: r.id})
		return err
	}()
	ps, err := env.rs.PodSandboxStats(ctx(t), r.id)
	if status.Code(err) != status.Code(directErr) {
		t.Fatalf("PodSandboxStats: evelet %v, containerd %v", err, directErr)
	}
	if err != nil {
		t.Logf("PodSandboxStats: %v (containerd alike)", err)
		return
	}
	if ps.GetAttributes().GetId() != r.id || len(ps.GetLinux().GetContainers()) != 1 {
		t.Errorf("PodSandboxStats = %v", ps)
	}
	pss, err := env.rs.ListPodSandboxStats(ctx(t), &runtimeapi.PodSandboxStatsFilter{Id: r.id})
	if err != nil || len(pss) != 1 || pss[0].GetAttributes().GetId() != r.id {
		t.Errorf("ListPodSandboxStats by id = %v, %v", pss, err)
	}
	pss, err = env.rs.ListPodSandboxStats(ctx(t), &runtimeapi.PodSandboxStatsFilter{LabelSelector: map[string]string{"app": r.Name}})
	if err != nil || len(pss) != 1 {
		t.Errorf("ListPodSandboxStats by label = %v, %v", pss, err)
	}
}

func TestContainerEvents(t *testing.T) {
	needEnv(t)
	// containerd 1.6 has no event stream (1.7+ does); either way evelet
	// must answer as containerd does.
	c := ctx(t)
	dstream, err := env.direct.GetContainerEvents(c, &runtimeapi.GetEventsRequest{})
	var directErr error
	if err == nil {
		_, directErr = recvWithin(dstream, time.Second)
	}
	sstream, err := env.shim.GetContainerEvents(c, &runtimeapi.GetEventsRequest{})
	var shimErr error
	if err == nil {
		_, shimErr = recvWithin(sstream, time.Second)
	}
	if status.Code(directErr) != status.Code(shimErr) {
		t.Errorf("GetContainerEvents: containerd %v, evelet %v", directErr, shimErr)
	}
}

func recvWithin(s runtimeapi.RuntimeService_GetContainerEventsClient, d time.Duration) (*runtimeapi.ContainerEventResponse, error) {
	type res struct {
		ev  *runtimeapi.ContainerEventResponse
		err error
	}
	ch := make(chan res, 1)
	go func() { ev, err := s.Recv(); ch <- res{ev, err} }()
	select {
	case r := <-ch:
		return r.ev, r.err
	case <-time.After(d):
		return nil, status.Error(codes.DeadlineExceeded, "no event")
	}
}

// lineNumbers returns i for every CRI log line "<time> stdout F line<i>".
func lineNumbers(b []byte) []int {
	var n []int
	for _, l := range strings.Split(string(b), "\n") {
		if _, rest, ok := strings.Cut(l, " stdout F line"); ok {
			if i, err := strconv.Atoi(rest); err == nil {
				n = append(n, i)
			}
		}
	}
	return n
}
