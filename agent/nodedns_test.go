package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/lf-edge/evelet/bootstrap/intent"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"sigs.k8s.io/yaml"
)

// The kubelet gets the node-local address as clusterDNS only once the
// agent set its interface up; with node-local DNS off it gets none (pods
// fall back to the device's resolvers) and nothing touches the host's
// links. The cluster domain is the agent's either way.
func TestKubeletClusterDNSFollowsNodeDNS(t *testing.T) {
	dir := t.TempDir()
	a := New(Config{StateDir: filepath.Join(dir, "persist"), RunDir: filepath.Join(dir, "run"), Source: &fakeSource{},
		NodeDNS: NodeDNSOptions{ClusterDomain: "edge.example"}})
	os.MkdirAll(a.cfg.RunDir, 0o700)
	j := &intent.Join{NodeName: "n1", DeviceUUID: "u1", NodeIP: "10.0.0.5"}
	config := func() *kubeletv1beta1.KubeletConfiguration {
		t.Helper()
		if _, err := a.kubelet(j); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, "kubelet", "config.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var c kubeletv1beta1.KubeletConfiguration
		if err := yaml.Unmarshal(b, &c); err != nil {
			t.Fatal(err)
		}
		return &c
	}
	// Off: startNodeDNS is a no-op (Enabled false) and clusterDNS is empty.
	a.startNodeDNS(context.Background(), j)()
	if c := config(); len(c.ClusterDNS) != 0 || c.ClusterDomain != "edge.example" {
		t.Fatalf("node DNS off: clusterDNS %v, clusterDomain %q", c.ClusterDNS, c.ClusterDomain)
	}
	// What startNodeDNS records once evelet-dns0 holds the address.
	a.mu.Lock()
	a.dnsAddr = a.cfg.NodeDNS.address()
	a.mu.Unlock()
	if c := config(); len(c.ClusterDNS) != 1 || c.ClusterDNS[0] != "169.254.20.10" {
		t.Fatalf("node DNS up: clusterDNS %v", c.ClusterDNS)
	}
	// Leaving forgets it (and, off, touches no link).
	if err := a.removeNodeDNS(); err != nil {
		t.Fatal(err)
	}
	if got := a.clusterDNS(); got != nil {
		t.Fatalf("after leave: clusterDNS %v", got)
	}
}
