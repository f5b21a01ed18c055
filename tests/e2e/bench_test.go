package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/policy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// BenchmarkJoin measures agent start -> Node Ready with a fresh bootstrap
// token (discovery, TLS bootstrapping, first status), plus the resident
// memory of the agent and its kubelet once the node is Ready.
func BenchmarkJoin(b *testing.B) {
	if env.skipWhy != "" {
		b.Skip(env.skipWhy)
	}
	var total time.Duration
	var rssAgent, rssKubelet int64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		node := fmt.Sprintf("edge-bench-%d", i)
		tok, err := env.cp.CreateBootstrapToken(context.Background(), time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		d := newDevice(b, joinFor(node, tok))
		b.StartTimer()
		start := time.Now()
		d.start()
		waitNodeReady(b, node, 3*time.Minute)
		total += time.Since(start)
		b.StopTimer()
		if st, err := d.status(); err == nil && st.KubeletPID != 0 {
			rssKubelet += settledRSSKB(st.KubeletPID)
		}
		rssAgent += settledRSSKB(d.cmd.Process.Pid)
		d.stop()
		env.cp.Client().CoreV1().Nodes().Delete(context.Background(), node, metav1.DeleteOptions{})
		b.StartTimer()
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "join-s/op")
	b.ReportMetric(float64(rssAgent)/float64(b.N)/1024, "agent-RSS-MiB")
	b.ReportMetric(float64(rssKubelet)/float64(b.N)/1024, "kubelet-RSS-MiB")
	if st, err := os.Stat(env.evelet); err == nil {
		b.ReportMetric(float64(st.Size())/(1<<20), "binary-MiB")
	}
}

// BenchmarkPodStart sends the same pod (sandbox + busybox container,
// RunPodSandbox+CreateContainer+StartContainer) to containerd's CRI
// directly and through `evelet cri`, and reports the latency of each and
// their ratio.
func BenchmarkPodStart(b *testing.B) {
	if env.skipWhy != "" {
		b.Skip(env.skipWhy)
	}
	sock := filepath.Join(os.TempDir(), fmt.Sprintf("evelet-bench-%d.sock", os.Getpid()))
	shim := exec.Command(env.evelet, "cri", "--socket="+sock, "--containerd="+env.ctrd.Endpoint(), "--log-level=warn")
	shim.Stderr = os.Stderr
	shim.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := shim.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { shim.Process.Signal(syscall.SIGTERM); shim.Wait() }()
	direct := criClient(b, env.ctrd.Socket())
	evelet := criClient(b, sock)
	lat := map[string][]time.Duration{}
	for i := 0; i < b.N; i++ {
		sides := []struct {
			name string
			rs   runtimeapi.RuntimeServiceClient
		}{{"direct", direct}, {"evelet", evelet}}
		if i%2 == 1 {
			// Alternate who goes first so caches and page faults even out.
			sides[0], sides[1] = sides[1], sides[0]
		}
		for _, side := range sides {
			d, err := startPod(side.rs, fmt.Sprintf("bench-%s-%d", side.name, i))
			if err != nil {
				b.Fatalf("%s: %v", side.name, err)
			}
			lat[side.name] = append(lat[side.name], d)
		}
	}
	pd, pe := median(lat["direct"]), median(lat["evelet"])
	b.ReportMetric(float64(pd.Microseconds())/1000, "direct-ms")
	b.ReportMetric(float64(pe.Microseconds())/1000, "evelet-ms")
	b.ReportMetric(float64(pe)/float64(pd), "ratio")
}

// startPod times RunPodSandbox+CreateContainer+StartContainer, then
// removes the pod again (untimed).
func startPod(rs runtimeapi.RuntimeServiceClient, name string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sbCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "bench", Uid: name},
		LogDirectory: filepath.Join(os.TempDir(), "evelet-bench-logs", name),
		Linux:        &runtimeapi.LinuxPodSandboxConfig{},
	}
	os.MkdirAll(sbCfg.LogDirectory, 0o755)
	defer os.RemoveAll(sbCfg.LogDirectory)
	start := time.Now()
	sb, err := rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sbCfg})
	if err != nil {
		return 0, err
	}
	defer func() {
		rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.PodSandboxId})
		rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.PodSandboxId})
	}()
	c, err := rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: sb.PodSandboxId, SandboxConfig: sbCfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "main"},
			Image:    &runtimeapi.ImageSpec{Image: images.BusyboxRef},
			Command:  []string{"sleep", "3600"},
			LogPath:  "main.log",
			// What the kubelet sends for a default (masked) /proc.
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				MaskedPaths: policy.BaselineMaskedPaths(), ReadonlyPaths: policy.BaselineReadonlyPaths(),
			}},
		},
	})
	if err != nil {
		return 0, err
	}
	if _, err := rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func criClient(b *testing.B, sock string) runtimeapi.RuntimeServiceClient {
	var conn *grpc.ClientConn
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err = grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err = runtimeapi.NewRuntimeServiceClient(conn).Version(ctx, &runtimeapi.VersionRequest{})
			cancel()
			if err == nil {
				break
			}
			conn.Close()
		}
		if time.Now().After(deadline) {
			b.Fatalf("CRI at %s: %v", sock, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.Cleanup(func() { conn.Close() })
	return runtimeapi.NewRuntimeServiceClient(conn)
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// settledRSSKB reads a process's RSS once it has stopped growing: two
// readings a second apart within 1%, or the last reading after 30 s. A
// kubelet just Ready still allocates for a while (informers, first syncs).
func settledRSSKB(pid int) int64 {
	prev := rssKB(pid)
	// A timeout is not an error here: the last reading is the figure.
	_ = wait.PollUntilContextTimeout(context.Background(), time.Second, 30*time.Second, false, func(context.Context) (bool, error) {
		cur := rssKB(pid)
		settled := cur == 0 || abs64(cur-prev)*100 <= prev
		prev = cur
		return settled, nil
	})
	return prev
}

func abs64(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}

func rssKB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				v, _ := strconv.ParseInt(f[1], 10, 64)
				return v
			}
		}
	}
	return 0
}
