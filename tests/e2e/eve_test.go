package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/eve/evecrypt"
	"github.com/lf-edge/evelet/internal/nodelabels"
	"github.com/lf-edge/evelet/tests/controlplane"
	"github.com/lf-edge/evelet/tests/evesim"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// newSimDevice is a simulated EVE device whose agent reads only EVE-side
// inputs: pubsub files, the checkpoint, the device ECDH key.
func newSimDevice(t testing.TB, name string) (*device, *evesim.Device) {
	d := newBareDevice(t)
	sim, err := evesim.New(filepath.Join(d.dir, "eve"), name)
	if err != nil {
		t.Fatal(err)
	}
	d.source = []string{"--eve-run=" + sim.Root.Run, "--eve-persist=" + sim.Root.Persist}
	return d, sim
}

func simCluster(t testing.TB, cp *controlplane.ControlPlane, name, id string) evesim.Cluster {
	tok, err := cp.CreateBootstrapToken(testCtx(t, time.Minute), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	k10, err := cp.K10Token(testCtx(t, time.Minute), tok)
	if err != nil {
		t.Fatal(err)
	}
	return evesim.Cluster{
		Name: name, ID: id, JoinServerIP: "127.0.0.1", ClusterIPPrefix: "127.0.0.1/8",
		Token: k10,
		// The test apiserver is not on 6443.
		ConfigItems: map[string]string{"evelet.apiserver-url": cp.URL()},
	}
}

// TestEVEJoinLeaveRejoin: the device joins with EVE-side inputs only, leaves
// when the controller removes the cluster, and joins a second cluster.
func TestEVEJoinLeaveRejoin(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 15*time.Minute)
	d, sim := newSimDevice(t, "Edge Device 7")
	node := "edge-device-7"
	deleteNodeAtEnd(t, node)
	d.start()
	d.waitStatus(30*time.Second, "NotJoined before any cluster intent", func(s agent.Status) bool { return s.Phase == agent.PhaseNoJoin })

	if err := sim.SetCluster(simCluster(t, env.cp, "prod", "11111111-2222-4333-8444-555555555555")); err != nil {
		t.Fatal(err)
	}
	n := waitNodeReady(t, node, 3*time.Minute)
	if n.Labels[nodelabels.DeviceUUID] != sim.UUID || n.Spec.ProviderID != "eve://"+sim.UUID {
		t.Errorf("node labels %v providerID %q, want device %s", n.Labels, n.Spec.ProviderID, sim.UUID)
	}
	if n.Labels[nodelabels.OSVersion] != nodelabels.SanitizeValue(sim.OSVersion) {
		t.Errorf("os-version label %q, want %q", n.Labels[nodelabels.OSVersion], sim.OSVersion)
	}

	// The controller removes the cluster: the device leaves.
	if err := sim.RemoveCluster(); err != nil {
		t.Fatal(err)
	}
	st := d.waitStatus(2*time.Minute, "Left", func(s agent.Status) bool { return s.Phase == agent.PhaseLeft })
	if st.KubeletPID != 0 {
		t.Errorf("kubelet still running after leaving")
	}
	waitFor(t, 2*time.Minute, "node gone, or cordoned and NotReady", func() (bool, error) { return nodeLeft(env.cp.Client(), node) })
	if _, err := os.Stat(d.credDir()); !os.IsNotExist(err) {
		t.Errorf("credentials remain after leaving: %v", err)
	}

	// A second cluster.
	dir, err := os.MkdirTemp("/tmp", "evelet-cp2-")
	if err != nil {
		t.Fatal(err)
	}
	cp2, err := controlplane.Start(ctx, controlplane.Options{Dir: filepath.Join(dir, "cp"), BinDir: env.cp.BinDir(), NodeMonitorGracePeriod: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp2.Stop(); os.RemoveAll(dir) })
	if err := sim.SetCluster(simCluster(t, cp2, "lab", "99999999-2222-4333-8444-555555555555")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Minute, "node Ready in cluster 2", func() (bool, error) {
		n, err := cp2.Client().CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		return err == nil && isReady(n), err
	})
	d.waitStatus(time.Minute, "Running in cluster 2", func(s agent.Status) bool {
		return s.Phase == agent.PhaseRunning && s.APIServer == cp2.URL()
	})

	// The cluster is removed while the agent is down: on its next start it
	// still leaves, with the credentials it kept.
	d.stop()
	if err := sim.RemoveCluster(); err != nil {
		t.Fatal(err)
	}
	d.start()
	d.waitStatus(2*time.Minute, "Left after a restart", func(s agent.Status) bool { return s.Phase == agent.PhaseLeft })
	waitFor(t, 2*time.Minute, "node gone, or cordoned and NotReady, in cluster 2", func() (bool, error) { return nodeLeft(cp2.Client(), node) })
	if _, err := os.Stat(d.credDir()); !os.IsNotExist(err) {
		t.Errorf("credentials remain after leaving: %v", err)
	}
}

// TestEVEBadInput: on a running node, each kind of bad EVE input gives one
// clear error in `evelet status`, leaves the node and its credentials alone,
// and the error clears when good input returns.
func TestEVEBadInput(t *testing.T) {
	needEnv(t)
	d, sim := newSimDevice(t, "edge-bad-input")
	node := "edge-bad-input"
	deleteNodeAtEnd(t, node)
	good := simCluster(t, env.cp, "prod", "11111111-2222-4333-8444-555555555555")
	if err := sim.SetCluster(good); err != nil {
		t.Fatal(err)
	}
	d.start()
	waitNodeReady(t, node, 3*time.Minute)
	running := d.waitKubeletSettled(time.Minute)

	unknownFormat := good
	unknownFormat.Token = "hello-i-am-not-a-token"
	cases := []struct {
		name  string
		fault func() error
		want  string
	}{
		{"malformed JSON", func() error { return sim.WriteRawClusterConfig([]byte(`{"Valid": true, "ClusterName": `)) }, "malformed JSON"},
		{"truncated checkpoint without backup", func() error {
			if err := sim.RemoveCheckpointBackup(); err != nil {
				return err
			}
			return sim.TruncateCheckpoint(40)
		}, "checkpoint"},
		{"wrong cipher context", func() error { return sim.SetClusterWithCipherContextID(good, "no-such-context") }, "cipher context"},
		{"wrong device key", sim.ReplaceDeviceKey, evecrypt.ErrHashMismatch.Error()},
		{"clear-text hash mismatch", func() error { return sim.SetClusterTamperedHash(good) }, evecrypt.ErrHashMismatch.Error()},
		{"unknown token format", func() error { return sim.SetCluster(unknownFormat) }, "accepted formats"},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "-"), func(t *testing.T) {
			if err := c.fault(); err != nil {
				t.Fatal(err)
			}
			st := d.waitStatus(30*time.Second, "error naming "+c.want, func(s agent.Status) bool {
				return strings.Contains(s.LastError, c.want)
			})
			t.Logf("status error: %s", st.LastError)
			if st.Phase != agent.PhaseRunning || st.KubeletPID != running.KubeletPID {
				t.Errorf("bad input disturbed the node: phase %s kubelet pid %d (was %d)", st.Phase, st.KubeletPID, running.KubeletPID)
			}
			if _, err := os.Stat(filepath.Join(d.credDir(), "kubeconfig")); err != nil {
				t.Errorf("credentials lost: %v", err)
			}
			if !strings.Contains(d.log(), c.want) {
				t.Errorf("agent log lacks %q", c.want)
			}
			// Good input again: the error clears, the node is still the same.
			if err := sim.Restore(good); err != nil {
				t.Fatal(err)
			}
			d.waitStatus(30*time.Second, "error cleared", func(s agent.Status) bool { return s.LastError == "" && s.Phase == agent.PhaseRunning })
		})
	}
	waitNodeReady(t, node, 30*time.Second)
}

// TestEVEUnreachableJoinServer: a join server nobody answers on gives a
// clear, retried error and writes no credentials.
func TestEVEUnreachableJoinServer(t *testing.T) {
	needEnv(t)
	d, sim := newSimDevice(t, "edge-unreachable")
	c := simCluster(t, env.cp, "prod", "11111111-2222-4333-8444-555555555555")
	c.ConfigItems = map[string]string{"evelet.apiserver-url": "https://127.0.0.1:1"}
	if err := sim.SetCluster(c); err != nil {
		t.Fatal(err)
	}
	d.start()
	st := d.waitStatus(time.Minute, "Joining with a connection error", func(s agent.Status) bool {
		return s.Phase == agent.PhaseJoining && strings.Contains(s.LastError, "127.0.0.1:1")
	})
	t.Logf("status error: %s", st.LastError)
	assertNoCredentials(t, d)
}
