package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/lf-edge/evelet/eve/pubsub"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

// BenchmarkOSUpdateDrain measures EVE's drain request (zedagent's
// NodeDrainRequest) -> NodeDrainStatus Complete on the socket, with N pods
// of a Deployment on the node (N = 1, 5, 10), against the real control
// plane. The pods end on SIGTERM at once, so the figure is evelet's
// cordon, evictions and the wait until the pods are gone, not grace
// periods. Between iterations EVE withdraws the request (uncordon) and the
// pods come back.
func BenchmarkOSUpdateDrain(b *testing.B) {
	if env.skipWhy != "" {
		b.Skip(env.skipWhy)
	}
	ctx := context.Background()
	cs := env.cp.Client()
	_, sim, ds := startUpgradeDevice(b, "edge-bench-upgrade", true)
	node := "edge-bench-upgrade"
	const app = "bench-upg"
	dep := busyboxDeployment(app, node, "trap 'exit 0' TERM; sleep 3600 & wait")
	dep.Spec.Replicas = ptr.To[int32](0)
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cs.AppsV1().Deployments("default").Delete(context.Background(), app, metav1.DeleteOptions{}) })

	for _, n := range []int{1, 5, 10} {
		b.Run(fmt.Sprintf("pods=%d", n), func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, n)
				if _, err := cs.AppsV1().Deployments("default").Patch(ctx, app, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
					b.Fatal(err)
				}
				waitFor(b, 5*time.Minute, fmt.Sprintf("%d pods Running", n), func() (bool, error) {
					run := 0
					for _, p := range podsOnTB(b, node, app) {
						if p.Status.Phase == "Running" && p.DeletionTimestamp == nil {
							run++
						}
					}
					return run == n, fmt.Errorf("%d running", run)
				})
				b.StartTimer()
				start := time.Now()
				if _, err := sim.RequestDrain(pubsub.DrainRequesterDeviceOp, "reboot"); err != nil {
					b.Fatal(err)
				}
				ds.wait(5*time.Minute, pubsub.DrainStatusComplete, pubsub.DrainRequesterDeviceOp)
				total += time.Since(start)
				b.StopTimer()
				if err := sim.WithdrawDrain(pubsub.DrainRequesterDeviceOp); err != nil {
					b.Fatal(err)
				}
				ds.wait(time.Minute, pubsub.DrainStatusNotRequested, 0)
				b.StartTimer()
			}
			b.ReportMetric(total.Seconds()/float64(b.N), "request-to-complete-s")
		})
	}
}
