package eve

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/tests/evesim"
)

func TestReleasePersistentTopics(t *testing.T) {
	type want struct{ known, cluster, cert bool }
	for v, w := range map[string]want{
		"14.5.1-lts-kvm-amd64":              {true, true, true},
		"14.5.3-lts-kvm-amd64":              {true, true, true},
		"14.5.4-rc1-kvm-amd64":              {true, true, false},
		"14.5.4-lts-kvm-amd64":              {true, true, false},
		"14.5.5-lts-kvm-amd64":              {true, true, false},
		"15.11.0-kvm-amd64":                 {true, true, true},
		"16.0.0-lts-kvm-amd64":              {true, true, true},
		"16.0.1-rc1-kvm-amd64":              {true, false, false},
		"16.0.1-lts-kvm-amd64":              {true, false, false},
		"16.11.9-kvm-amd64":                 {true, true, true},
		"16.12.0-kvm-amd64":                 {true, false, false},
		"16.12.0-rc1":                       {true, false, false},
		"17.0.0-lts":                        {true, false, false},
		"9.99.0":                            {true, true, true},
		"0.0.0-master-2c6b4154-kvm-amd64":   {true, false, false}, // snapshot build of a branch
		"":                                  {false, false, false},
		"Unknown":                           {false, false, false}, // what pillar's agentlog.EveVersion returns
		"snapshot-kvm-amd64":                {false, false, false},
		"16.x.0":                            {false, false, false},
		"99999999999999999999999.1.1-kvm-x": {false, false, false},
	} {
		r := ParseRelease(v)
		if got := (want{r.Known(), r.PersistentClusterTopics(), r.PersistentControllerCert()}); got != w {
			t.Errorf("%q: %+v, want %+v", v, got, w)
		}
	}
	// eve-release wins over ZbootStatus; ZbootStatus is the fallback.
	s := pubsub.Snapshot{EVERelease: "16.12.0-kvm-amd64", Zboot: map[string]pubsub.ZbootStatus{"IMGA": {CurrentPartition: true, ShortVersion: "14.5.1"}}}
	if r := ReleaseOf(s); r.Version != "16.12.0-kvm-amd64" {
		t.Errorf("ReleaseOf = %v", r)
	}
	s.EVERelease = ""
	if r := ReleaseOf(s); r.Version != "14.5.1" || !r.PersistentClusterTopics() {
		t.Errorf("ReleaseOf from Zboot = %v", r)
	}
}

func TestControllerCertDirsByRelease(t *testing.T) {
	root := pubsub.Root{Run: "/r", Persist: "/p"}
	run, old := "/r/zedagent/ControllerCert", "/p/status/zedagent/ControllerCert"
	for v, want := range map[string][]string{
		"16.12.0-kvm-amd64":    {run},
		"0.0.0-master-abc":     {run},
		"14.5.1-lts-kvm-amd64": {run, old},
		"14.5.4-lts-kvm-amd64": {run},
		"16.0.0-lts-kvm-amd64": {run, old},
		"16.0.1-lts-kvm-amd64": {run},
		"":                     {run, old},
	} {
		if got := ControllerCertDirs(root, ParseRelease(v)); !reflect.DeepEqual(got, want) {
			t.Errorf("%q: %v, want %v", v, got, want)
		}
	}
}

// copyDir copies the files of a topic directory.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(src + "/" + e.Name())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst+"/"+e.Name(), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestResolveControllerCertLocation (issue 7 A1): a current EVE publishes
// the controller certificates under <Run> only; an older one under
// <Persist>/status. Certificates left in the old place on a current EVE are
// not read.
func TestResolveControllerCertLocation(t *testing.T) {
	c := evesim.Cluster{Name: "prod", JoinServerIP: "10.1.2.3", ClusterIPPrefix: "10.1.2.7/24", Token: k10}

	t.Run("current EVE reads /run", func(t *testing.T) {
		sim := newSim(t)
		if err := sim.SetCluster(c); err != nil {
			t.Fatal(err)
		}
		if sim.ControllerCertDir() != sim.Root.ControllerCertDir() {
			t.Fatalf("evesim publishes certs in %s", sim.ControllerCertDir())
		}
		if r, err := Resolve(inputs(t, sim)); err != nil || r.Join == nil {
			t.Fatalf("%+v, %v", r, err)
		}
	})

	t.Run("current EVE ignores the old place", func(t *testing.T) {
		sim := newSim(t)
		if err := sim.SetCluster(c); err != nil {
			t.Fatal(err)
		}
		// Boot window: zedagent has not published the certificates yet; a
		// copy sits in the pre-16.12 place. It is not read, and the error
		// says where the certificates are expected.
		copyDir(t, sim.Root.ControllerCertDir(), sim.Root.ControllerCertDirPersistent())
		if err := sim.Reboot(evesim.Options{}); err != nil {
			t.Fatal(err)
		}
		_, err := Resolve(inputs(t, sim))
		if err == nil || !strings.Contains(err.Error(), sim.Root.ControllerCertDir()) || strings.Contains(err.Error(), sim.Root.ControllerCertDirPersistent()) {
			t.Fatalf("error = %v", err)
		}
		if err := sim.PublishControllerCerts(); err != nil {
			t.Fatal(err)
		}
		if r, err := Resolve(inputs(t, sim)); err != nil || r.Join == nil {
			t.Fatalf("after zedagent published: %+v, %v", r, err)
		}
	})

	t.Run("older EVE reads /persist/status", func(t *testing.T) {
		sim, err := evesim.NewWithOptions(t.TempDir(), "old", evesim.Options{OldEVE: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := sim.SetCluster(c); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(sim.Root.ControllerCertDir()); !os.IsNotExist(err) {
			t.Fatalf("old EVE has %s", sim.Root.ControllerCertDir())
		}
		r, err := Resolve(inputs(t, sim))
		if err != nil || r.Join == nil || r.Join.OSVersion != evesim.OldOSVersion {
			t.Fatalf("%+v, %v", r, err)
		}
	})
}

// TestResolvePrecedenceByRelease (issue 7 A3): cluster intent and device
// identity come from the run-time topic, else the checkpoint, else (EVE
// version unknown only) the old persistent copy. On EVE 16.12.0 and later
// the <Persist>/status copies are leftovers and never win.
func TestResolvePrecedenceByRelease(t *testing.T) {
	prod := evesim.Cluster{Name: "prod", JoinServerIP: "10.1.2.3", ClusterIPPrefix: "10.1.2.7/24", Token: k10}

	// upgraded: a device that was in "prod" on an old EVE, upgraded, and
	// was then removed from the cluster; it reboots, and zedagent has
	// published only the controller certificates so far. The stale copies
	// under <Persist>/status still say "prod" and name the device "stale".
	upgraded := func(t *testing.T) *evesim.Device {
		t.Helper()
		sim, err := evesim.NewWithOptions(t.TempDir(), "Fresh Name", evesim.Options{OldEVE: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := sim.SetCluster(prod); err != nil {
			t.Fatal(err)
		}
		if err := pubsub.Write(sim.Root.EdgeNodeInfoPersistent(), pubsub.EdgeNodeInfo{DeviceName: "stale", DeviceID: sim.UUID}); err != nil {
			t.Fatal(err)
		}
		for _, step := range []func() error{
			func() error { return sim.Reboot(evesim.Options{}) },
			sim.PublishZedagent,
			sim.RemoveCluster,
			func() error { return sim.Reboot(evesim.Options{}) },
			sim.PublishControllerCerts,
		} {
			if err := step(); err != nil {
				t.Fatal(err)
			}
		}
		if enc, ok, _ := pubsub.Read[pubsub.EdgeNodeClusterConfig](sim.Root.EdgeNodeClusterConfigPersistent()); !ok || !enc.Valid {
			t.Fatal("setup: no stale cluster copy")
		}
		return sim
	}

	t.Run("stale cluster copy loses to the checkpoint", func(t *testing.T) {
		sim := upgraded(t)
		r, err := Resolve(inputs(t, sim))
		if err != nil || r.Join != nil {
			t.Fatalf("removed cluster rejoined from the stale copy: %+v, %v", r, err)
		}
		// zedagent publishes: still not in a cluster.
		if err := sim.PublishZedagent(); err != nil {
			t.Fatal(err)
		}
		if r, err := Resolve(inputs(t, sim)); err != nil || r.Join != nil {
			t.Fatalf("after publish: %+v, %v", r, err)
		}
	})

	t.Run("stale identity loses to the checkpoint", func(t *testing.T) {
		sim := upgraded(t)
		if err := sim.SetCluster(prod); err != nil { // back in the cluster
			t.Fatal(err)
		}
		if err := sim.Reboot(evesim.Options{}); err != nil {
			t.Fatal(err)
		}
		if err := sim.PublishControllerCerts(); err != nil {
			t.Fatal(err)
		}
		r, err := Resolve(inputs(t, sim))
		if err != nil || r.Join == nil || r.Join.NodeName != "fresh-name" {
			t.Fatalf("%+v, %v", r, err)
		}
	})

	t.Run("a broken stale copy does not block", func(t *testing.T) {
		sim := upgraded(t)
		if err := os.WriteFile(sim.Root.EdgeNodeClusterConfigPersistent(), []byte("{"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := sim.SetCluster(prod); err != nil {
			t.Fatal(err)
		}
		if r, err := Resolve(inputs(t, sim)); err != nil || r.Join == nil {
			t.Fatalf("%+v, %v", r, err)
		}
		// The live topic broken is an error.
		if err := sim.WriteRawClusterConfig([]byte("{")); err != nil {
			t.Fatal(err)
		}
		if _, err := Resolve(inputs(t, sim)); err == nil || !strings.Contains(err.Error(), "malformed JSON") {
			t.Fatalf("broken live topic: %v", err)
		}
	})

	t.Run("run-time topic beats the checkpoint", func(t *testing.T) {
		sim := newSim(t)
		if err := sim.SetCluster(prod); err != nil {
			t.Fatal(err)
		}
		// zedagent rejected the config it checkpointed (pillar
		// parseEdgeNodeClusterConfig publishes Initialized only): its word counts.
		if err := pubsub.Write(sim.Root.EdgeNodeClusterConfig(), pubsub.EdgeNodeClusterConfig{Initialized: true}); err != nil {
			t.Fatal(err)
		}
		if r, err := Resolve(inputs(t, sim)); err != nil || r.Join != nil {
			t.Fatalf("%+v, %v", r, err)
		}
		// Noise (neither Initialized nor Valid) is not a word: the checkpoint counts.
		if err := pubsub.Write(sim.Root.EdgeNodeClusterConfig(), pubsub.EdgeNodeClusterConfig{}); err != nil {
			t.Fatal(err)
		}
		if r, err := Resolve(inputs(t, sim)); err != nil || r.Join == nil {
			t.Fatalf("noise: %+v, %v", r, err)
		}
	})

	t.Run("older EVE: the persistent copy is the run-time topic", func(t *testing.T) {
		sim, err := evesim.NewWithOptions(t.TempDir(), "old", evesim.Options{OldEVE: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := sim.SetCluster(prod); err != nil {
			t.Fatal(err)
		}
		// The controller's next config is not parsed yet: the persistent
		// topic (still "prod") is what this EVE's own agents follow.
		if err := os.Remove(sim.Root.Checkpoint()); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(sim.CheckpointBackup()); err != nil {
			t.Fatal(err)
		}
		if err := sim.PublishZedkubeToken(k10); err != nil { // no checkpoint: no cipher context to decrypt with
			t.Fatal(err)
		}
		r, err := Resolve(inputs(t, sim))
		if err != nil || r.Join == nil || r.ClusterKey == "" || !strings.HasPrefix(r.ClusterKey, "prod/") {
			t.Fatalf("%+v, %v", r, err)
		}
	})

	t.Run("unknown version: old copy only after the checkpoint", func(t *testing.T) {
		sim := upgraded(t)
		// EVE does not say which release it runs.
		if err := os.Remove(sim.Root.EVERelease()); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(sim.Root.ZbootStatusDir()); err != nil {
			t.Fatal(err)
		}
		if r, err := Resolve(inputs(t, sim)); err != nil || r.Join != nil {
			t.Fatalf("checkpoint says no cluster: %+v, %v", r, err)
		}
		// Without any checkpoint the old copy is all there is.
		if err := os.Remove(sim.Root.Checkpoint()); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(sim.CheckpointBackup()); err != nil {
			t.Fatal(err)
		}
		if err := sim.PublishZedkubeToken(k10); err != nil {
			t.Fatal(err)
		}
		r, err := Resolve(inputs(t, sim))
		if err != nil || r.Join == nil || r.Join.NodeName != "stale" {
			t.Fatalf("last resort: %+v, %v", r, err)
		}
	})
}

// TestReleaseTableMatchesSimulator: eve's per-line table and the
// simulator's (written separately from pillar's tags) agree on where each
// release publishes.
func TestReleaseTableMatchesSimulator(t *testing.T) {
	for _, v := range []string{"14.5.3-lts-kvm-amd64", "14.5.4-rc1-kvm-amd64", "14.5.5-lts-kvm-amd64", "15.11.0-kvm-amd64",
		"16.0.0-lts-kvm-amd64", "16.0.1-rc1-kvm-amd64", "16.0.1-lts-kvm-amd64", "16.11.0-kvm-amd64", "16.12.0-kvm-amd64",
		"17.0.0-lts-kvm-amd64", "0.0.0-master-2c6b4154-kvm-amd64"} {
		sim, err := evesim.NewWithOptions(t.TempDir(), "d", evesim.Options{OSVersion: v})
		if err != nil {
			t.Fatal(err)
		}
		rel := ParseRelease(v)
		if got := sim.ControllerCertDir() == sim.Root.ControllerCertDirPersistent(); got != rel.PersistentControllerCert() {
			t.Errorf("%s: simulator publishes certs persistently: %v, eve says %v", v, got, rel.PersistentControllerCert())
		}
		if got := sim.ClusterConfigPath() == sim.Root.EdgeNodeClusterConfigPersistent(); got != rel.PersistentClusterTopics() {
			t.Errorf("%s: simulator publishes the cluster persistently: %v, eve says %v", v, got, rel.PersistentClusterTopics())
		}
	}
}

// TestRemovedDeviceStaysRemoved16_0_1 (issue 16): 16.0.1-lts publishes
// EdgeNodeClusterConfig, EdgeNodeInfo and ControllerCert under <Run> only,
// while 16.0.0-lts published them under <Persist>/status. A device that was
// in "prod" on 16.0.0-lts, upgraded to 16.0.1-lts and was then removed from
// the cluster keeps the stale <Persist>/status copy for ever; at every boot,
// before zedagent publishes, the checkpoint (no cluster) must decide. Before
// the fix evelet took the stale copy for the live topic of a "pre-16.12"
// release and rejoined at every boot.
func TestRemovedDeviceStaysRemoved16_0_1(t *testing.T) {
	const old, lts = "16.0.0-lts-kvm-amd64", "16.0.1-lts-kvm-amd64"
	prod := evesim.Cluster{Name: "prod", JoinServerIP: "10.1.2.3", ClusterIPPrefix: "10.1.2.7/24", Token: k10}
	sim, err := evesim.NewWithOptions(t.TempDir(), "edge", evesim.Options{OSVersion: old})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.SetCluster(prod); err != nil {
		t.Fatal(err)
	}
	if r, err := Resolve(inputs(t, sim)); err != nil || r.Join == nil {
		t.Fatalf("on %s: %+v, %v", old, r, err)
	}
	for _, step := range []func() error{
		func() error { return sim.Reboot(evesim.Options{OSVersion: lts}) },
		sim.PublishZedagent,
		sim.RemoveCluster,
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := Resolve(inputs(t, sim)); err != nil || r.Join != nil {
		t.Fatalf("removed on %s: %+v, %v", lts, r, err)
	}
	for boot := 1; boot <= 3; boot++ {
		if err := sim.Reboot(evesim.Options{OSVersion: lts}); err != nil {
			t.Fatal(err)
		}
		if cc, ok, _ := pubsub.Read[pubsub.EdgeNodeClusterConfig](sim.Root.EdgeNodeClusterConfigPersistent()); !ok || !cc.Valid {
			t.Fatal("setup: the stale 16.0.0 copy is gone")
		}
		for i, step := range []func() error{
			func() error { return nil }, // zedagent has published nothing yet
			sim.PublishControllerCerts,  // only the certificates
			sim.PublishZedagent,         // everything
		} {
			if err := step(); err != nil {
				t.Fatal(err)
			}
			if r, err := Resolve(inputs(t, sim)); err != nil || r.Join != nil {
				t.Fatalf("boot %d step %d: the removed device rejoins from the stale copy: %+v, %v", boot, i, r, err)
			}
		}
	}
}
