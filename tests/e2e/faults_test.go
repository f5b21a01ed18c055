package e2e

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/lf-edge/evelet/agent"
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
// the node reconverges to Ready.
func TestFaults(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 15*time.Minute)
	cs := env.cp.Client()
	node := "edge-faults"
	deleteNodeAtEnd(t, node)
	d := newDevice(t, joinFor(node, newToken(t)))
	d.start()
	waitNodeReady(t, node, 3*time.Minute)
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

	check := func(fault string) {
		t.Helper()
		waitNodeReady(t, node, 2*time.Minute)
		// Give the kubelet time to resync; a duplicate would appear now.
		time.Sleep(10 * time.Second)
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

	// 1. kill -9 the agent, then start it again (as EVE's service manager would).
	d.kill9()
	time.Sleep(2 * time.Second)
	d.start()
	d.waitStatus(time.Minute, "Running after agent crash", func(s agent.Status) bool {
		return s.Phase == agent.PhaseRunning && s.Credentials == "reused" && s.KubeletPID != 0
	})
	check("kill -9 agent")

	// 2. kill -9 the kubelet: the agent restarts it.
	st, err := d.status()
	if err != nil || st.KubeletPID == 0 {
		t.Fatalf("no kubelet pid: %+v %v", st, err)
	}
	old := st.KubeletPID
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.waitStatus(time.Minute, "kubelet restarted", func(s agent.Status) bool {
		return s.KubeletPID != 0 && s.KubeletPID != old && s.KubeletRestarts >= 1
	})
	check("kill -9 kubelet")

	// 3. containerd restarts under everyone's feet.
	if err := env.ctrd.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "CRI through evelet answers again", func() (bool, error) {
		s, err := d.status()
		return err == nil && s.Phase == agent.PhaseRunning, fmt.Errorf("%+v %v", s, err)
	})
	check("containerd restart")
}
