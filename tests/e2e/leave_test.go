package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/bootstrap"
	"github.com/lf-edge/evelet/tests/controlplane"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestLeaveAndRejoinAnotherCluster: with a pod running, guarded by a PDB
// that refuses its eviction (minAvailable 1, one replica), the join intent
// moves to a second cluster. The device starts leaving and its drain waits:
// the pod stays while the Eviction API answers 429 and the agent retries.
// Once the PDB is relaxed the drain evicts the pod and the device deletes
// (or cordons) its Node in the first cluster, wipes those credentials, and
// joins the second. Then the intent is removed and it leaves the second
// cluster too, with no kubelet process left behind.
func TestLeaveAndRejoinAnotherCluster(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 15*time.Minute)
	cs := env.cp.Client()
	node := "edge-mover"
	deleteNodeAtEnd(t, node)
	j := joinFor(node, newToken(t))
	d := newDevice(t, j)
	d.start()
	waitNodeReady(t, node, 3*time.Minute)

	dep := busyboxDeployment("mover", node, "echo up; exec sleep 3600")
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.AppsV1().Deployments("default").Delete(testCtx(t, 30*time.Second), "mover", metav1.DeleteOptions{})
	})
	pdb := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "mover", Namespace: "default"},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MinAvailable: &intstr.IntOrString{Type: intstr.Int, IntVal: 1},
			Selector:     &metav1.LabelSelector{MatchLabels: map[string]string{"app": "mover"}},
		},
	}
	if _, err := cs.PolicyV1().PodDisruptionBudgets("default").Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.PolicyV1().PodDisruptionBudgets("default").Delete(testCtx(t, 30*time.Second), "mover", metav1.DeleteOptions{})
	})
	pod := runningPod(t, "mover", 2*time.Minute)
	waitPDB(t, "mover", 0)
	// The PDB really refuses this pod's eviction (a dry run, so nothing moves).
	if err := evictDryRun(ctx, pod); !apierrors.IsTooManyRequests(err) {
		t.Fatalf("dry-run eviction under minAvailable 1: %v, want 429 TooManyRequests", err)
	}

	// A second, independent cluster.
	dir, err := os.MkdirTemp("/tmp", "evelet-cp2-")
	if err != nil {
		t.Fatal(err)
	}
	cp2, err := controlplane.Start(ctx, controlplane.Options{Dir: filepath.Join(dir, "cp"), BinDir: env.cp.BinDir(), NodeMonitorGracePeriod: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp2.Stop(); os.RemoveAll(dir) })
	tok2, err := cp2.CreateBootstrapToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if pids := kubeletPIDs(d); len(pids) != 1 {
		t.Fatalf("kubelet processes of the device before leaving: %v, want one", pids)
	}
	j2 := j
	j2.Material = bootstrap.Material{APIServer: cp2.URL(), Token: tok2, CACertHashes: []string{cp2.CAPin()}}
	d.writeJoin(j2)

	// The drain waits: the agent is Leaving, it has been refused (429) at
	// least twice (so it retried), and the pod is still there, not deleting.
	blocked := "eviction blocked by a PodDisruptionBudget"
	d.waitStatus(2*time.Minute, "Leaving", func(s agent.Status) bool { return s.Phase == agent.PhaseLeaving })
	waitFor(t, 2*time.Minute, "the drain to be refused twice by the PDB", func() (bool, error) {
		n := strings.Count(d.log(), blocked)
		return n >= 2, fmt.Errorf("%d refusals logged", n)
	})
	if s, err := d.status(); err != nil || s.Phase != agent.PhaseLeaving {
		t.Fatalf("status while the PDB blocks: %+v %v, want Leaving", s, err)
	}
	p, err := cs.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil || p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		t.Fatalf("pod while the PDB blocks the drain: %v, deleting %v, err %v; want it Running", p.Status.Phase, p.DeletionTimestamp, err)
	}
	if err := evictDryRun(ctx, pod); !apierrors.IsTooManyRequests(err) {
		t.Fatalf("dry-run eviction while the drain waits: %v, want 429", err)
	}
	evicted := "msg=evicted" // the agent's line for an eviction the API accepted (logrus text format)
	if strings.Contains(d.log(), evicted) {
		t.Fatalf("the agent logged an eviction while the PDB refused it")
	}

	// Relax the PDB: the same drain, still retrying, now evicts the pod.
	relax := []byte(`{"spec":{"minAvailable":null,"maxUnavailable":1}}`)
	if _, err := cs.PolicyV1().PodDisruptionBudgets("default").Patch(ctx, "mover", types.MergePatchType, relax, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}

	// Cluster 1: the pod was evicted (not just killed, nor left behind by a
	// timed-out drain); the Node is gone, or, where the cluster does not let
	// nodes delete themselves (the default node authorizer), cordoned and
	// NotReady.
	waitFor(t, 3*time.Minute, "node gone, or cordoned and NotReady, in cluster 1", func() (bool, error) {
		return nodeLeft(cs, node)
	})
	if _, err := cs.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("pod %s still exists in cluster 1 after the drain: %v", pod.Name, err)
	}
	log := d.log()
	if i, k := strings.LastIndex(log, blocked), strings.Index(log, evicted); k < i || !strings.Contains(log[k:], pod.Name) {
		t.Errorf("agent log shows no eviction of %s after the last refusal", pod.Name)
	}
	if strings.Contains(log, "drain of "+node+" incomplete") {
		t.Errorf("the drain timed out instead of evicting")
	}
	// Cluster 2: same device, Ready, credentials for cluster 2 only.
	waitFor(t, 3*time.Minute, "node Ready in cluster 2", func() (bool, error) {
		n, err := cp2.Client().CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return isReady(n), fmt.Errorf("conditions %v", n.Status.Conditions)
	})
	d.waitStatus(2*time.Minute, "Running against cluster 2", func(s agent.Status) bool {
		return s.Phase == agent.PhaseRunning && s.APIServer == cp2.URL()
	})
	rec, err := bootstrap.Store{Dir: d.credDir()}.Record()
	if err != nil || rec == nil || rec.APIServer != cp2.URL() || rec.CAPin != cp2.CAPin() {
		t.Fatalf("join record after moving: %+v, %v", rec, err)
	}
	if pids := kubeletPIDs(d); len(pids) != 1 {
		t.Errorf("kubelet processes of the device in cluster 2: %v, want one", pids)
	}

	// Intent removed: leave cluster 2.
	if err := os.Remove(d.joinPath); err != nil {
		t.Fatal(err)
	}
	st := d.waitStatus(3*time.Minute, "Left", func(s agent.Status) bool { return s.Phase == agent.PhaseLeft })
	if st.LastError != "" {
		t.Errorf("left with error: %s", st.LastError)
	}
	waitFor(t, 2*time.Minute, "node gone, or cordoned and NotReady, in cluster 2", func() (bool, error) {
		return nodeLeft(cp2.Client(), node)
	})
	if _, err := os.Stat(d.credDir()); !os.IsNotExist(err) {
		t.Errorf("credentials still on disk after leaving: %v", err)
	}
	// The agent stopped its kubelet before reporting Left: no process of
	// this device's kubelet is alive (asked of /proc, not of evelet).
	if pids := kubeletPIDs(d); len(pids) != 0 {
		t.Errorf("kubelet processes still alive after leaving: %v", pids)
	}
}

// waitPDB waits until the disruption controller has computed the PDB's
// status for its current spec, with the given disruptions allowed.
func waitPDB(t *testing.T, name string, allowed int32) {
	t.Helper()
	waitFor(t, 2*time.Minute, fmt.Sprintf("PDB %s to allow %d disruptions", name, allowed), func() (bool, error) {
		p, err := env.cp.Client().PolicyV1().PodDisruptionBudgets("default").Get(testCtx(t, 10*time.Second), name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		ok := p.Status.ObservedGeneration == p.Generation && p.Status.DisruptionsAllowed == allowed && p.Status.CurrentHealthy == 1
		return ok, fmt.Errorf("status %+v", p.Status)
	})
}

// evictDryRun asks the Eviction API, as an admin and without effect,
// whether pod may be evicted now.
func evictDryRun(ctx context.Context, pod *corev1.Pod) error {
	return env.cp.Client().PolicyV1().Evictions(pod.Namespace).Evict(ctx, &policyv1.Eviction{
		ObjectMeta:    metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace},
		DeleteOptions: &metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}},
	})
}

// nodeLeft: the Node is gone, or cordoned with a Ready condition that is no
// longer True.
func nodeLeft(cs kubernetes.Interface, node string) (bool, error) {
	n, err := cs.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	if !n.Spec.Unschedulable {
		return false, fmt.Errorf("node not cordoned")
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
			return false, fmt.Errorf("node cordoned but still Ready")
		}
	}
	return true, nil
}
