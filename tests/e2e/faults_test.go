package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/tests/internal/proc"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// podFacts is what must not change when evelet's parts crash.
type podFacts struct {
	containerID string
	restarts    int32
	sandboxes   int
	containers  int
}

func factsOf(t *testing.T, name string) podFacts {
	t.Helper()
	p, err := env.cp.Client().CoreV1().Pods("default").Get(testCtx(t, 10*time.Second), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Status.ContainerStatuses) != 1 {
		t.Fatalf("container statuses: %v", p.Status.ContainerStatuses)
	}
	cs := p.Status.ContainerStatuses[0]
	conn, err := env.ctrd.DialCRI()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	l, err := runtimeapi.NewRuntimeServiceClient(conn).ListContainers(testCtx(t, 10*time.Second), &runtimeapi.ListContainersRequest{
		Filter: &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"io.kubernetes.pod.uid": string(p.UID)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return podFacts{containerID: cs.ContainerID, restarts: cs.RestartCount, sandboxes: len(sandboxesOf(t, string(p.UID))), containers: len(l.Containers)}
}

// TestFaults: with a pod running, kill -9 the agent, kill -9 the kubelet,
// and restart containerd. Each time the pod keeps its container ID and
// restart count, no sandbox or container is duplicated or orphaned, and
// the node reconverges to Ready. After each crash the old kubelet process
// is gone and exactly one new one serves the node (seen in /proc and in
// its Lease renewals, not in evelet's own status). "No duplicate" is
// checked after the kubelet has synced the pod since the fault (its
// pod-worker metric), not after a sleep.
func TestFaults(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 15*time.Minute)
	cs := env.cp.Client()
	node := "edge-faults"
	deleteNodeAtEnd(t, node)
	d := newDevice(t, joinFor(node, newToken(t)))
	d.start()
	waitNodeReady(t, node, 3*time.Minute)
	// The faults below hit a steady node: the kubelet the agent keeps,
	// past its one move onto the local API cache after the join.
	d.waitKubeletSettled(2 * time.Minute)
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, busyboxDeployment("steady", node, "echo steady; exec sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.AppsV1().Deployments("default").Delete(testCtx(t, 30*time.Second), "steady", metav1.DeleteOptions{})
	})
	pod := runningPod(t, "steady", 2*time.Minute)
	want := factsOf(t, pod.Name)
	if want.sandboxes != 1 || want.containers != 1 || want.restarts != 0 {
		t.Fatalf("before faults: %+v", want)
	}
	t.Logf("before: %+v", want)

	check := func(fault string, syncsBefore float64) {
		t.Helper()
		waitNodeReady(t, node, 2*time.Minute)
		// A duplicate sandbox would be made by a pod sync: wait for one.
		waitFor(t, 3*time.Minute, "the kubelet to sync the pod after "+fault, func() (bool, error) {
			n, err := podSyncs(t, node)
			return err == nil && n > syncsBefore, fmt.Errorf("pod syncs %v (before %v): %v", n, syncsBefore, err)
		})
		got := factsOf(t, pod.Name)
		if got != want {
			t.Errorf("after %s: %+v, want %+v", fault, got, want)
		}
		p, _ := cs.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
		if p.Status.Phase != corev1.PodRunning {
			t.Errorf("after %s: pod phase %s", fault, p.Status.Phase)
		}
		l, _ := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=steady"})
		if len(l.Items) != 1 {
			t.Errorf("after %s: %d pods of the Deployment, want 1", fault, len(l.Items))
		}
	}
	// tookOver: exactly one kubelet of this device runs, it is not old, and
	// it renewed the node's Lease after it started.
	tookOver := func(fault string, old int, started time.Time) int {
		t.Helper()
		var pid int
		waitFor(t, 2*time.Minute, "one new kubelet after "+fault, func() (bool, error) {
			pids := kubeletPIDs(d)
			if len(pids) != 1 || pids[0] == old {
				return false, fmt.Errorf("kubelets of the device: %v (old %d)", pids, old)
			}
			pid = pids[0]
			return true, nil
		})
		waitLeaseRenewedAfter(t, node, started, 2*time.Minute)
		if pids := kubeletPIDs(d); len(pids) != 1 || pids[0] != pid {
			t.Errorf("after %s: kubelets of the device %v, want only %d", fault, pids, pid)
		}
		return pid
	}

	// 1. kill -9 the agent, then start it again (as EVE's service manager
	// would). Its kubelet must die with it (Pdeathsig), not linger beside
	// the next agent's.
	old := onlyKubelet(t, d)
	d.kill9()
	waitFor(t, time.Minute, "the killed agent's kubelet to exit", func() (bool, error) {
		pids := kubeletPIDs(d)
		return len(pids) == 0, fmt.Errorf("kubelets of the device still alive: %v", pids)
	})
	started := time.Now()
	d.start()
	d.waitStatus(time.Minute, "Running after agent crash", func(s agent.Status) bool {
		return s.Phase == agent.PhaseRunning && s.Credentials == "reused"
	})
	tookOver("kill -9 agent", old, started)
	check("kill -9 agent", 0)

	// 2. kill -9 the kubelet: the agent restarts it.
	old = onlyKubelet(t, d)
	started = time.Now()
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	tookOver("kill -9 kubelet", old, started)
	d.waitStatus(time.Minute, "a kubelet restart counted", func(s agent.Status) bool { return s.KubeletRestarts >= 1 })
	check("kill -9 kubelet", 0)

	// 3. containerd restarts under everyone's feet.
	kubelet := onlyKubelet(t, d)
	if err := env.ctrd.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "CRI through evelet answers again", func() (bool, error) {
		s, err := d.status()
		return err == nil && s.Phase == agent.PhaseRunning, fmt.Errorf("%+v %v", s, err)
	})
	syncs, err := podSyncs(t, node)
	if err != nil {
		t.Fatal(err)
	}
	check("containerd restart", syncs)
	if pids := kubeletPIDs(d); len(pids) != 1 || pids[0] != kubelet {
		t.Errorf("kubelets after the containerd restart: %v, want the same %d", pids, kubelet)
	}
}

// kubeletPIDs walks /proc for `evelet kubelet` processes of this device
// (their --root-dir is under the device's state directory).
func kubeletPIDs(d *device) []int {
	rootDir := "--root-dir=" + d.stateDir() + "/"
	var pids []int
	for _, pid := range proc.PIDs() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) < 2 || args[1] != "kubelet" {
			continue
		}
		for _, a := range args[2:] {
			if strings.HasPrefix(a, rootDir) {
				if st, ok := proc.ReadStat(pid); ok && st.State != 'Z' {
					pids = append(pids, pid)
				}
				break
			}
		}
	}
	return pids
}

// onlyKubelet returns the device's one kubelet process, once evelet's
// status (refreshed every few seconds) names the same pid.
func onlyKubelet(t *testing.T, d *device) int {
	t.Helper()
	pids := kubeletPIDs(d)
	if len(pids) != 1 {
		t.Fatalf("kubelet processes of the device: %v, want one", pids)
	}
	d.waitStatus(time.Minute, fmt.Sprintf("status naming kubelet %d", pids[0]), func(s agent.Status) bool { return s.KubeletPID == pids[0] })
	return pids[0]
}

// podSyncs is how many pod syncs the node's kubelet process has finished
// (kubelet_pod_worker_duration_seconds_count, all operations), read through
// the apiserver's node proxy. It starts at 0 in a new kubelet.
func podSyncs(t *testing.T, node string) (float64, error) {
	b, err := env.cp.Client().CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", node, "proxy", "metrics").DoRaw(testCtx(t, 20*time.Second))
	if err != nil {
		return 0, err
	}
	var n float64
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "kubelet_pod_worker_duration_seconds_count") {
			continue
		}
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %v", l, err)
		}
		n += v
	}
	return n, nil
}
