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
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestLeaveAndRejoinAnotherCluster: with a pod running (guarded by a PDB
// that allows the eviction), the join intent moves to a second cluster. The
// device drains and deletes its Node in the first cluster, wipes those
// credentials, and joins the second. Then the intent is removed and it
// leaves the second cluster too.
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
			MaxUnavailable: &intstr.IntOrString{Type: intstr.Int, IntVal: 1},
			Selector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": "mover"}},
		},
	}
	if _, err := cs.PolicyV1().PodDisruptionBudgets("default").Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.PolicyV1().PodDisruptionBudgets("default").Delete(testCtx(t, 30*time.Second), "mover", metav1.DeleteOptions{})
	})
	pod := runningPod(t, "mover", 2*time.Minute)

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
	j2 := j
	j2.Material = bootstrap.Material{APIServer: cp2.URL(), Token: tok2, CACertHashes: []string{cp2.CAPin()}}
	d.writeJoin(j2)

	// Cluster 1: the pod was evicted (not just killed); the Node is gone, or,
	// where the cluster does not let nodes delete themselves (the default
	// node authorizer), cordoned and NotReady.
	waitFor(t, 3*time.Minute, "node gone, or cordoned and NotReady, in cluster 1", func() (bool, error) {
		return nodeLeft(cs, node)
	})
	if _, err := cs.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("pod %s still exists in cluster 1 after the drain: %v", pod.Name, err)
	}
	if !strings.Contains(d.log(), "evicted") {
		t.Errorf("agent log shows no eviction")
	}
	// Cluster 2: same device, Ready, credentials for cluster 2 only.
	n2 := func() bool {
		_, err := cp2.Client().CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		return err == nil
	}
	waitFor(t, 3*time.Minute, "node Ready in cluster 2", func() (bool, error) { return n2(), nil })
	d.waitStatus(2*time.Minute, "Running against cluster 2", func(s agent.Status) bool {
		return s.Phase == agent.PhaseRunning && s.APIServer == cp2.URL()
	})
	rec, err := bootstrap.Store{Dir: d.credDir()}.Record()
	if err != nil || rec == nil || rec.APIServer != cp2.URL() || rec.CAPin != cp2.CAPin() {
		t.Fatalf("join record after moving: %+v, %v", rec, err)
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
	if st.KubeletPID != 0 {
		t.Errorf("kubelet still running after leaving (pid %d)", st.KubeletPID)
	}
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
