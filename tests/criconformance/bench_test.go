package criconformance

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// BenchmarkShimOverhead measures what evelet's CRI server adds to
// containerd's own CRI, with the same plain gRPC client on both sides and
// the shim as deployed (guardrail policy, metrics, info logging):
//
//   - PodStart: RunPodSandbox+CreateContainer+StartContainer of 50 pods,
//     alternately through evelet and straight to containerd;
//   - ListContainers and ContainerStatus, the kubelet's most frequent
//     calls, with those 50 pods running.
//
// Each reports p50/p99 in microseconds per side, the added median and the
// ratio of medians. Run it once: -run '^$' -bench . -benchtime 1x (about a
// minute; the sample counts are fixed, b.N multiplies them).
func BenchmarkShimOverhead(b *testing.B) {
	needEnv(b)
	const pods = 50
	var (
		mu      sync.Mutex
		started []benchPod
	)
	b.Cleanup(func() { removeBenchPods(started) })

	b.Run("PodStart", func(b *testing.B) {
		var direct, shim []time.Duration
		for i := range pods * b.N {
			c := env.direct
			if i%2 == 1 {
				c = env.shim
			}
			p, d, err := startBenchPod(b, c)
			if err != nil {
				b.Fatal(err)
			}
			mu.Lock()
			started = append(started, p)
			mu.Unlock()
			if c == env.shim {
				shim = append(shim, d)
			} else {
				direct = append(direct, d)
			}
		}
		report(b, direct, shim)
	})
	if len(started) < pods {
		b.Fatalf("only %d pods running", len(started))
	}

	b.Run("ListContainers", func(b *testing.B) {
		unary(b, 1000*b.N, func(c runtimeapi.RuntimeServiceClient, _ int) error {
			resp, err := c.ListContainers(context.Background(), &runtimeapi.ListContainersRequest{})
			if err == nil && len(resp.GetContainers()) < pods {
				err = fmt.Errorf("only %d containers listed", len(resp.GetContainers()))
			}
			return err
		})
	})
	b.Run("ContainerStatus", func(b *testing.B) {
		unary(b, 2000*b.N, func(c runtimeapi.RuntimeServiceClient, i int) error {
			_, err := c.ContainerStatus(context.Background(), &runtimeapi.ContainerStatusRequest{ContainerId: started[i%len(started)].ctrID})
			return err
		})
	})
}

type benchPod struct{ sandboxID, ctrID string }

// startBenchPod starts a kubelet-shaped pod with one sleeping busybox and
// times the three calls the kubelet makes for it.
func startBenchPod(b *testing.B, c runtimeapi.RuntimeServiceClient) (benchPod, time.Duration, error) {
	p := newPod(b, "bench", "main")
	sb := p.SandboxConfig()
	cfg := p.Container("main", "sleep", "3600")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	run, err := c.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sb})
	if err != nil {
		return benchPod{}, 0, fmt.Errorf("RunPodSandbox: %w", err)
	}
	bp := benchPod{sandboxID: run.GetPodSandboxId()}
	cr, err := c.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: bp.sandboxID, Config: cfg, SandboxConfig: sb})
	if err != nil {
		return bp, 0, fmt.Errorf("CreateContainer: %w", err)
	}
	bp.ctrID = cr.GetContainerId()
	if _, err := c.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: bp.ctrID}); err != nil {
		return bp, 0, fmt.Errorf("StartContainer: %w", err)
	}
	return bp, time.Since(start), nil
}

func removeBenchPods(pods []benchPod) {
	work := make(chan string)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				removeSandbox(id)
			}
		}()
	}
	for _, p := range pods {
		work <- p.sandboxID
	}
	close(work)
	wg.Wait()
}

// unary times n calls on each side, interleaved in random order so that
// drift (other builds on the machine, caches) hits both sides alike.
func unary(b *testing.B, n int, call func(runtimeapi.RuntimeServiceClient, int) error) {
	for _, c := range []runtimeapi.RuntimeServiceClient{env.direct, env.shim} {
		if err := call(c, 0); err != nil { // connect and warm up outside the timing
			b.Fatal(err)
		}
	}
	direct := make([]time.Duration, 0, n)
	shim := make([]time.Duration, 0, n)
	for i := range n {
		sides := []runtimeapi.RuntimeServiceClient{env.direct, env.shim}
		if rand.IntN(2) == 1 {
			sides[0], sides[1] = sides[1], sides[0]
		}
		for _, c := range sides {
			start := time.Now()
			if err := call(c, i); err != nil {
				b.Fatal(err)
			}
			if d := time.Since(start); c == env.shim {
				shim = append(shim, d)
			} else {
				direct = append(direct, d)
			}
		}
	}
	report(b, direct, shim)
}

func report(b *testing.B, direct, shim []time.Duration) {
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	d50, d99 := percentile(direct, 50), percentile(direct, 99)
	s50, s99 := percentile(shim, 50), percentile(shim, 99)
	b.ReportMetric(us(d50), "direct-p50-us")
	b.ReportMetric(us(d99), "direct-p99-us")
	b.ReportMetric(us(s50), "evelet-p50-us")
	b.ReportMetric(us(s99), "evelet-p99-us")
	b.ReportMetric(us(s50-d50), "added-p50-us")
	b.ReportMetric(float64(s50)/float64(d50), "ratio-p50")
	b.ReportMetric(0, "ns/op") // per-call figures above; ns/op would be the whole sample
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}
