package eve

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/lf-edge/evelet/eve/evecfg"
	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/tests/evesim"
)

const (
	k10    = "K10" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" + "::abcdef.0123456789abcdef"
	pinHex = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

// inputs reads what the simulated device wrote, as the Source does.
func inputs(t *testing.T, sim *evesim.Device) Inputs {
	t.Helper()
	snap := pubsub.ReadSnapshot(sim.Root)
	cp, err := evecfg.LoadCheckpoint(sim.Root.Checkpoint())
	return Inputs{Snapshot: snap, Checkpoint: cp, CheckpointErr: err, DeviceKeyPath: sim.Root.DeviceECDHKey(),
		ControllerCertDirs: ControllerCertDirs(sim.Root, ReleaseOf(snap))}
}

func newSim(t *testing.T) *evesim.Device {
	sim, err := evesim.New(t.TempDir(), "Line 3 / Press")
	if err != nil {
		t.Fatal(err)
	}
	return sim
}

func TestResolveFromPubsubDecryptsToken(t *testing.T) {
	sim := newSim(t)
	if err := sim.SetCluster(evesim.Cluster{Name: "prod", JoinServerIP: "10.1.2.3", ClusterIPPrefix: "10.1.2.7/24", Token: k10}); err != nil {
		t.Fatal(err)
	}
	r, err := Resolve(inputs(t, sim))
	if err != nil {
		t.Fatal(err)
	}
	j := r.Join
	if j.APIServer != "https://10.1.2.3:6443" || j.Token != "abcdef.0123456789abcdef" || len(j.CABundleHashes) != 1 || j.CABundleHashes[0] != pinHex {
		t.Fatalf("material %+v", j.Material)
	}
	if j.NodeName != "line-3-press" || j.DeviceUUID != sim.UUID || j.OSVersion != sim.OSVersion {
		t.Fatalf("join %+v", j)
	}
}

func TestResolveFallsBackToCheckpoint(t *testing.T) {
	sim := newSim(t)
	if err := sim.SetCluster(evesim.Cluster{Name: "prod", JoinServerIP: "10.1.2.3", ClusterIPPrefix: "10.1.2.7/24", Token: k10,
		ConfigItems: map[string]string{"evelet.apiserver-url": "https://api.example:7443", "other.item": "x"}}); err != nil {
		t.Fatal(err)
	}
	// After a reboot zedagent has published only the controller
	// certificates yet: the checkpoint carries cluster intent and device
	// identity.
	if err := sim.Reboot(evesim.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := sim.PublishControllerCerts(); err != nil {
		t.Fatal(err)
	}
	r, err := Resolve(inputs(t, sim))
	if err != nil {
		t.Fatal(err)
	}
	if r.Join == nil || r.Join.APIServer != "https://api.example:7443" || r.Join.DeviceUUID != sim.UUID {
		t.Fatalf("resolved %+v", r.Join)
	}
	if _, ok := r.ConfigItems["other.item"]; ok || r.ConfigItems["evelet.apiserver-url"] == "" {
		t.Fatalf("config items %v: want only evelet.* items", r.ConfigItems)
	}
}

func TestResolvePrefersZedkubePlaintext(t *testing.T) {
	sim := newSim(t)
	if err := sim.SetCluster(evesim.Cluster{Name: "prod", JoinServerIP: "10.1.2.3", ClusterIPPrefix: "10.1.2.7/24", Token: k10}); err != nil {
		t.Fatal(err)
	}
	// With zedkube's plaintext there, decryption is not needed: a broken
	// device key must not matter.
	env, _ := json.Marshal(map[string]any{"token": "zzzzzz.0123456789abcdef", "caCertHashes": []string{pinHex}, "apiServer": "https://10.9.9.9:6443"})
	if err := sim.PublishZedkubeToken(string(env)); err != nil {
		t.Fatal(err)
	}
	if err := sim.ReplaceDeviceKey(); err != nil {
		t.Fatal(err)
	}
	r, err := Resolve(inputs(t, sim))
	if err != nil {
		t.Fatal(err)
	}
	if r.Join.Token != "zzzzzz.0123456789abcdef" || r.Join.APIServer != "https://10.9.9.9:6443" || r.Join.CACertHashes[0] != pinHex {
		t.Fatalf("material %+v", r.Join.Material)
	}
}

func TestResolveKubeconfigToken(t *testing.T) {
	sim := newSim(t)
	kc := `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://10.4.4.4:6443", certificate-authority-data: "` + "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCi0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K" + `"}}]
users: [{name: u, user: {token: "abcdef.0123456789abcdef"}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`
	if err := sim.SetCluster(evesim.Cluster{Name: "prod", JoinServerIP: "10.1.2.3", ClusterIPPrefix: "10.1.2.7/24", Token: kc}); err != nil {
		t.Fatal(err)
	}
	r, err := Resolve(inputs(t, sim))
	if err != nil {
		t.Fatal(err)
	}
	if r.Join.Kubeconfig == "" || r.Join.Token != "" || r.Join.Server() != "https://10.4.4.4:6443" {
		t.Fatalf("material %+v", r.Join.Material)
	}
}

func TestResolveNotInCluster(t *testing.T) {
	sim := newSim(t)
	r, err := Resolve(inputs(t, sim))
	if err != nil || r.Join != nil {
		t.Fatalf("no cluster yet: %+v, %v", r, err)
	}
	if err := sim.SetCluster(evesim.Cluster{Name: "prod", JoinServerIP: "10.1.2.3", ClusterIPPrefix: "10.1.2.7/24", Token: k10}); err != nil {
		t.Fatal(err)
	}
	if err := sim.RemoveCluster(); err != nil {
		t.Fatal(err)
	}
	if r, err := Resolve(inputs(t, sim)); err != nil || r.Join != nil {
		t.Fatalf("removed cluster: %+v, %v", r, err)
	}
}

func TestResolveErrorsNameTheInput(t *testing.T) {
	for name, tc := range map[string]struct {
		fault func(*evesim.Device, evesim.Cluster) error
		want  string
	}{
		"wrong cipher context": {func(d *evesim.Device, c evesim.Cluster) error { return d.SetClusterWithCipherContextID(c, "nope") }, "cipher context"},
		"wrong device key":     {func(d *evesim.Device, c evesim.Cluster) error { return d.ReplaceDeviceKey() }, "clear-text hash mismatch"},
		"tampered hash":        {func(d *evesim.Device, c evesim.Cluster) error { return d.SetClusterTamperedHash(c) }, "clear-text hash mismatch"},
		"malformed json":       {func(d *evesim.Device, c evesim.Cluster) error { return d.WriteRawClusterConfig([]byte("{")) }, "malformed JSON"},
		"unknown token": {func(d *evesim.Device, c evesim.Cluster) error {
			c.Token = "nonsense"
			return d.SetCluster(c)
		}, "accepted formats"},
		"bad join ip": {func(d *evesim.Device, c evesim.Cluster) error {
			return d.WriteRawClusterConfig([]byte(`{"Valid":true,"ClusterName":"p","JoinServerIP":"10.1.2.x"}`))
		}, "JoinServerIP"},
	} {
		t.Run(strings.ReplaceAll(name, " ", "-"), func(t *testing.T) {
			sim := newSim(t)
			c := evesim.Cluster{Name: "prod", JoinServerIP: "10.1.2.3", ClusterIPPrefix: "10.1.2.7/24", Token: k10}
			if err := sim.SetCluster(c); err != nil {
				t.Fatal(err)
			}
			if err := tc.fault(sim, c); err != nil {
				t.Fatal(err)
			}
			r, err := Resolve(inputs(t, sim))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Resolve = %+v, %v; want an error with %q", r, err, tc.want)
			}
			if strings.Contains(err.Error(), "0123456789abcdef::") || strings.Contains(err.Error(), ".0123456789abcdef") {
				t.Fatalf("error leaks the token secret: %v", err)
			}
		})
	}
}
