package e2e

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/utils/ptr"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/tests/devnet"
)

// BenchmarkOfflineReboot (issue 18): a device with three running busybox
// pods, whose local API cache is then filled through the real apiserver
// with 10 and then 100 more pods bound to the node (refused by the
// kubelet's admission, so they cost the cache and nothing else), reports
// the agent's resident memory at each step; then its link is cut and it is
// power-cycled b.N times, each time timing agent start -> the three pods'
// containers running again, offline, from the cache.
func BenchmarkOfflineReboot(b *testing.B) {
	if env.skipWhy != "" {
		b.Skip(env.skipWhy)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cs := env.cp.Client()
	d := env.devnet.NewDevice(b, 6, devnet.DeviceOptions{ControlPlane: env.cp, Evelet: env.evelet, Images: env.images})
	if err := d.Start(); err != nil {
		b.Fatal(err)
	}
	if _, err := d.WaitReady(ctx, 4*time.Minute); err != nil {
		b.Fatal(err)
	}
	sfx := strconv.FormatInt(time.Now().UnixNano()%1_000_000, 36)
	ns := "default"
	create := func(name string, mut func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name + "-" + sfx, Namespace: ns},
			Spec: corev1.PodSpec{NodeName: d.NodeName(), TerminationGracePeriodSeconds: ptr.To[int64](1),
				Containers: []corev1.Container{{Name: "main", Image: images.BusyboxRef, ImagePullPolicy: corev1.PullNever,
					Command: []string{"sh", "-c", "exec sleep 3600"}}}}}
		if mut != nil {
			mut(p)
		}
		got, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			cs.CoreV1().Pods(ns).Delete(context.Background(), got.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		})
		return got
	}
	var run []*corev1.Pod
	for i := range 3 {
		run = append(run, create(fmt.Sprintf("bench-off-run%d", i), nil))
	}
	for _, p := range run {
		waitFor(b, 3*time.Minute, p.Name+" Running", func() (bool, error) {
			got, err := cs.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
			return err == nil && got.Status.Phase == corev1.PodRunning, err
		})
	}
	objects := func() int {
		st, err := d.Status()
		if err != nil || st.APICache == nil {
			return 0
		}
		return st.APICache.Objects
	}
	if _, err := d.WaitStatus(ctx, time.Minute, "the API cache filled", func(s *agent.Status) bool {
		return s.APICache != nil && s.APICache.Online && s.APICache.KubeletThroughCache && s.APICache.Objects >= 3
	}); err != nil {
		b.Fatal(err)
	}
	// Reported at the end: ResetTimer drops metrics reported before it.
	rss3 := settledRSSKB(d.AgentPID())
	// Parked pods: bound to the node, with a node selector it lacks; the
	// kubelet reads them (into the cache) and refuses them (NodeAffinity).
	park := func(from, to int) {
		before := objects()
		for i := from; i < to; i++ {
			create(fmt.Sprintf("bench-off-park%d", i), func(p *corev1.Pod) {
				p.Spec.NodeSelector = map[string]string{"evelet.bench/none": "x"}
			})
		}
		if _, err := d.WaitStatus(ctx, 3*time.Minute, fmt.Sprintf("%d more pods in the API cache", to-from), func(s *agent.Status) bool {
			return s.APICache != nil && s.APICache.Objects >= before+(to-from)
		}); err != nil {
			b.Fatal(err)
		}
	}
	park(0, 10)
	rss13 := settledRSSKB(d.AgentPID())
	park(10, 100)
	rss103, cached := settledRSSKB(d.AgentPID()), objects()

	if err := d.SetLink(false); err != nil {
		b.Fatal(err)
	}
	defer d.SetLink(true)
	var total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if err := d.Reboot(devnet.RebootOptions{}); err != nil {
			b.Fatal(err)
		}
		up := time.Now()
		conn, err := d.Containerd().DialCRI()
		if err != nil {
			b.Fatal(err)
		}
		rs := runtimeapi.NewRuntimeServiceClient(conn)
		waitFor(b, 2*time.Minute, "the running pods back offline", func() (bool, error) {
			for _, p := range run {
				cts, err := rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
					State:         &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
					LabelSelector: map[string]string{"io.kubernetes.pod.uid": string(p.UID)}}})
				if err != nil || len(cts.Containers) != 1 {
					return false, fmt.Errorf("%s: %v", p.Name, err)
				}
			}
			return true, nil
		})
		total += time.Since(up)
		conn.Close()
	}
	b.ReportMetric(float64(rss3)/1024, "agent-RSS-MiB-3pods")
	b.ReportMetric(float64(rss13)/1024, "agent-RSS-MiB-13pods")
	b.ReportMetric(float64(rss103)/1024, "agent-RSS-MiB-103pods")
	b.ReportMetric(float64(cached), "cache-objects")
	b.ReportMetric(total.Seconds()/float64(b.N), "offline-boot-s/op")
	b.ReportMetric(float64(settledRSSKB(d.AgentPID()))/1024, "agent-RSS-MiB-103pods-offline")
}
