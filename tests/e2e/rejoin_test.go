package e2e

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/bootstrap"
	"github.com/lf-edge/evelet/tests/controlplane"
	"github.com/lf-edge/evelet/tests/internal/proc"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// oneKubelet waits until exactly one kubelet of this device runs
// (kubeletPIDs: read from /proc, not from the agent's own status).
func (d *device) oneKubelet(t *testing.T) int {
	t.Helper()
	var pid int
	waitFor(t, 2*time.Minute, "exactly one kubelet of the device", func() (bool, error) {
		k := kubeletPIDs(d)
		if len(k) != 1 {
			return false, fmt.Errorf("kubelets %v", k)
		}
		pid = k[0]
		return true, nil
	})
	return pid
}

// TestRebuiltClusterAtSameAddress: a device joined to a cluster gets a new
// bootstrap token for the same cluster (the kubelet process is kept), then
// the cluster is rebuilt at the same address with a new CA and the
// controller sends the new pin: the device leaves the old cluster and joins
// the new one, with the new CA on disk and a new kubelet. Before, the URL
// alone decided: the old credentials were reused and the kubelet stayed on
// the old CA.
func TestRebuiltClusterAtSameAddress(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 15*time.Minute)
	work, err := os.MkdirTemp("/tmp", "evelet-rebuilt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	start := func(name string, port int) *controlplane.ControlPlane {
		t.Helper()
		cp, err := controlplane.Start(ctx, controlplane.Options{Dir: filepath.Join(work, name), BinDir: env.cp.BinDir(),
			APIServerPort: port, NodeMonitorGracePeriod: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cp.Stop() })
		return cp
	}
	cp1 := start("cp1", 0)
	tok1, err := cp1.CreateBootstrapToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	node := "edge-rebuilt"
	j := joinFor(node, tok1)
	j.Material = bootstrap.Material{APIServer: cp1.URL(), Token: tok1, CACertHashes: []string{cp1.CAPin()}}
	d := newDevice(t, j)
	d.start()
	d.waitStatus(3*time.Minute, "Running in cluster 1", func(s agent.Status) bool { return s.Phase == agent.PhaseRunning })
	waitFor(t, 3*time.Minute, "node Ready in cluster 1", func() (bool, error) {
		n, err := cp1.Client().CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		return err == nil && isReady(n), err
	})
	// The kubelet kept is the one the agent moves onto the local API
	// cache once it has its client certificate, not the bootstrap one.
	d.waitKubeletSettled(2 * time.Minute)
	kubelet1 := d.oneKubelet(t)

	// Same cluster, new token: the kubelet process stays.
	tok1b, err := cp1.CreateBootstrapToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	j.Token = tok1b
	d.writeJoin(j)
	// Done when the agent says it took the token, or when the kubelet
	// process changed (the failure this guards against).
	waitFor(t, time.Minute, "agent took the new token (or restarted the kubelet)", func() (bool, error) {
		k := kubeletPIDs(d)
		return strings.Contains(d.log(), "new bootstrap token for the same cluster") || len(k) != 1 || k[0] != kubelet1, nil
	})
	if k := kubeletPIDs(d); len(k) != 1 || k[0] != kubelet1 {
		t.Fatalf("kubelet after a token-only change: %v, want the same process %d", k, kubelet1)
	}
	if _, ok := proc.ReadStat(kubelet1); !ok {
		t.Fatalf("kubelet %d is gone after a token-only change", kubelet1)
	}

	// Rebuild: the same address, new PKI, new etcd.
	u, _ := url.Parse(cp1.URL())
	port, _ := strconv.Atoi(u.Port())
	oldPin := cp1.CAPin()
	if err := cp1.Stop(); err != nil {
		t.Logf("stop cluster 1: %v", err)
	}
	cp2 := start("cp2", port)
	if cp2.URL() != cp1.URL() || cp2.CAPin() == oldPin {
		t.Fatalf("cluster 2 at %s (pin %s) is not a rebuild of %s (pin %s)", cp2.URL(), cp2.CAPin(), cp1.URL(), oldPin)
	}
	tok2, err := cp2.CreateBootstrapToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	j.Material = bootstrap.Material{APIServer: cp2.URL(), Token: tok2, CACertHashes: []string{cp2.CAPin()}}
	d.writeJoin(j)

	waitFor(t, 3*time.Minute, "node Ready in the rebuilt cluster", func() (bool, error) {
		n, err := cp2.Client().CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		return err == nil && isReady(n), err
	})
	rec, err := bootstrap.Store{Dir: d.credDir()}.Record()
	if err != nil || rec == nil || rec.CAPin != cp2.CAPin() {
		t.Fatalf("join record after the rebuild: %+v, %v; want pin %s", rec, err, cp2.CAPin())
	}
	ca, err := os.ReadFile(filepath.Join(d.credDir(), "ca.crt"))
	if err != nil || string(ca) != string(cp2.CACertPEM()) {
		t.Fatalf("ca.crt is not the rebuilt cluster's CA (%v)", err)
	}
	if k := d.oneKubelet(t); k == kubelet1 {
		t.Fatalf("kubelet %d survived the move to a new CA", k)
	}
	if !strings.Contains(d.log(), "left the cluster") {
		t.Errorf("agent log shows no leave of the old cluster")
	}
}
