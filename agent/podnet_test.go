package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"sigs.k8s.io/knftables"

	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/cni/podnet"
)

// nftFakes is a podnet.NFT over one knftables fake per family.
type nftFakes map[knftables.Family]*knftables.Fake

func (f nftFakes) nft(fam knftables.Family) (knftables.Interface, error) {
	if f[fam] == nil {
		f[fam] = knftables.NewFake(fam, podnet.Table)
	}
	return f[fam], nil
}

// kubeconfigStore is a fakeStore whose node kubeconfig is a real file.
type kubeconfigStore struct {
	fakeStore
	path string
}

func (s *kubeconfigStore) KubeconfigPath() string { return s.path }

func readDelegate(t *testing.T, a *Agent) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(a.cfg.CNI.ConfDir, CNIConflistName))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Plugins []struct {
			Delegate string `json:"delegate"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(raw, &c); err != nil || len(c.Plugins) != 1 {
		t.Fatalf("conflist %s: %v", raw, err)
	}
	return c.Plugins[0].Delegate
}

// In podcidr mode evelet-cni delegates eth0 to the network the agent
// writes, whatever --cni-default-network says.
func TestPodCIDRModeIsEveletCNIsDelegate(t *testing.T) {
	a, _ := cniAgent(t)
	j := &intent.Join{NodeName: "node1", DeviceUUID: "u"}
	if err := a.setupCNI(j); err != nil {
		t.Fatal(err)
	}
	if d := readDelegate(t, a); d != "evelet-default" {
		t.Fatalf("delegate %q without the item", d)
	}
	a.items = map[string]string{podnet.ItemMode: "podcidr"}
	if err := a.setupCNI(j); err != nil {
		t.Fatal(err)
	}
	if d := readDelegate(t, a); d != podnet.NetworkName {
		t.Fatalf("delegate %q in podcidr mode, want %q", d, podnet.NetworkName)
	}
	// A refused value keeps the owner's conflist.
	a.items = map[string]string{podnet.ItemMode: "flannel"}
	if err := a.setupCNI(j); err != nil {
		t.Fatal(err)
	}
	if d := readDelegate(t, a); d != "evelet-default" {
		t.Fatalf("delegate %q with a refused mode", d)
	}
}

// The agent reads its Node from the apiserver until the controller-manager
// has set spec.podCIDRs, then writes the conflist and the masquerade; on
// leave both go, with the IPAM state.
func TestStartPodNetworkFromNodeAndRemove(t *testing.T) {
	var gets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/nodes/node1" {
			http.NotFound(w, r)
			return
		}
		spec := `{}`
		if gets.Add(1) >= 3 { // the node IPAM controller got to it
			spec = `{"podCIDR": "10.244.21.0/24", "podCIDRs": ["10.244.21.0/24"]}`
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"kind": "Node", "apiVersion": "v1", "metadata": {"name": "node1"}, "spec": ` + spec + `}`))
	}))
	defer srv.Close()
	a, dir := cniAgent(t)
	kubeconfig := filepath.Join(dir, "node.kubeconfig")
	kc := "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"" + srv.URL + "\"}}]\n" +
		"users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
	if err := os.WriteFile(kubeconfig, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	a.store = &kubeconfigStore{path: kubeconfig}
	f := nftFakes{}
	a.podnetNFT = f.nft
	var removed, bridges atomic.Int32
	a.podnetRoutes = &hostGWOps{remove: func() error { removed.Add(1); return nil }, removeBridge: func() error { bridges.Add(1); return nil }}
	a.items = map[string]string{podnet.ItemMode: "podcidr", podnet.ItemClusterCIDR: "10.244.0.0/16"}
	oldPoll := podCIDRPoll
	podCIDRPoll = 10 * time.Millisecond
	defer func() { podCIDRPoll = oldPoll }()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a.startPodNetwork(ctx, &intent.Join{NodeName: "node1"})()

	path := filepath.Join(a.cfg.CNI.ConfDir, podnet.ConflistFile)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no conflist after the Node got its podCIDR (%d GETs): %v", gets.Load(), err)
	}
	if !strings.Contains(string(raw), `"subnet": "10.244.21.0/24"`) || !strings.Contains(string(raw), a.podNetIPAMDir()) {
		t.Errorf("conflist %s", raw)
	}
	rules := f[knftables.IPv4Family].Dump()
	if !strings.Contains(rules, "ip saddr 10.244.21.0/24 ip daddr != { 10.244.21.0/24, 10.244.0.0/16, 224.0.0.0/4 } masquerade") {
		t.Errorf("masquerade rules:\n%s", rules)
	}

	if err := os.MkdirAll(a.podNetIPAMDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := a.removePodNetwork(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, a.podNetIPAMDir()} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after leave: %v", p, err)
		}
	}
	if f[knftables.IPv4Family].Table != nil {
		t.Errorf("masquerade table left after leave:\n%s", f[knftables.IPv4Family].Dump())
	}
	if removed.Load() != 1 {
		t.Errorf("host-gw routes removed %d times on leave, want 1", removed.Load())
	}
	if bridges.Load() != 1 {
		t.Errorf("pod bridge removed %d times on leave, want 1", bridges.Load())
	}
}

// With evelet.pod-network.host-gw=true the agent routes the podCIDRs of
// the other Nodes on its link via their InternalIPs, and follows the list.
func TestHostGWRoutesFollowNodes(t *testing.T) {
	var lists atomic.Int32
	node := func(name, ip, cidr string) string {
		return `{"metadata": {"name": "` + name + `"}, "spec": {"podCIDRs": ["` + cidr + `"]}, "status": {"addresses": [{"type": "InternalIP", "address": "` + ip + `"}]}}`
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/api/v1/nodes/node1":
			w.Write([]byte(`{"kind": "Node", "apiVersion": "v1", ` + strings.TrimPrefix(node("node1", "10.250.0.11", "10.244.21.0/24"), "{")))
		case "/api/v1/nodes":
			items := []string{node("node1", "10.250.0.11", "10.244.21.0/24"), node("node2", "10.250.0.12", "10.244.22.0/24"),
				node("cloud", "192.168.1.5", "10.244.1.0/24")}
			if lists.Add(1) >= 2 { // node3 joins the link
				items = append(items, node("node3", "10.250.0.13", "10.244.23.0/24"))
			}
			w.Write([]byte(`{"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": [` + strings.Join(items, ",") + `]}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	a, dir := cniAgent(t)
	kubeconfig := filepath.Join(dir, "node.kubeconfig")
	kc := "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"" + srv.URL + "\"}}]\n" +
		"users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
	if err := os.WriteFile(kubeconfig, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	a.store = &kubeconfigStore{path: kubeconfig}
	a.podnetNFT = nftFakes{}.nft
	syncs := make(chan string, 100)
	a.podnetRoutes = &hostGWOps{
		onLink: func(ip netip.Addr) (string, []netip.Prefix, error) {
			if ip != netip.MustParseAddr("10.250.0.11") {
				t.Errorf("onLink asked for %s, not the node's InternalIP", ip)
			}
			return "eth0", []netip.Prefix{netip.MustParsePrefix("10.250.0.0/24")}, nil
		},
		sync: func(link string, want []podnet.HostGWRoute) error {
			var s []string
			for _, r := range want {
				s = append(s, r.Dst.String()+" via "+r.Via.String())
			}
			syncs <- link + ": " + strings.Join(s, ", ")
			return nil
		},
		remove: func() error { return nil },
	}
	a.items = map[string]string{podnet.ItemMode: "podcidr", podnet.ItemHostGW: "true"}
	oldPoll, oldResync := podCIDRPoll, hostGWResync
	podCIDRPoll, hostGWResync = 10*time.Millisecond, 10*time.Millisecond
	defer func() { podCIDRPoll, hostGWResync = oldPoll, oldResync }()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := a.startPodNetwork(ctx, &intent.Join{NodeName: "node1"})
	want := []string{"eth0: 10.244.22.0/24 via 10.250.0.12", "eth0: 10.244.22.0/24 via 10.250.0.12, 10.244.23.0/24 via 10.250.0.13"}
	for _, w := range want {
		select {
		case got := <-syncs:
			if got != w {
				t.Fatalf("sync %q, want %q", got, w)
			}
		case <-ctx.Done():
			t.Fatalf("no sync %q", w)
		}
	}
	cancel()
	done()
}

// Without podcidr mode nothing is started and leave touches no nftables.
func TestPodNetworkOffByDefault(t *testing.T) {
	a, _ := cniAgent(t)
	a.podnetNFT = func(knftables.Family) (knftables.Interface, error) {
		t.Fatal("nftables reached with the mode off")
		return nil, nil
	}
	a.startPodNetwork(context.Background(), &intent.Join{NodeName: "node1"})()
	if err := a.removePodNetwork(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestWaitNodeClientWaitsForTheClientCert: the kubeconfig the kubelet
// writes after a bootstrap names kubelet-client-current.pem, which can
// appear after the file; the pod network's wait goes on until it is
// readable (seen in BenchmarkServices: "pod network not set up: ...
// unable to read client-cert", and the node never got its pod network),
// and ends only with its context.
func TestWaitNodeClientWaitsForTheClientCert(t *testing.T) {
	old := nodeClientPoll
	nodeClientPoll = 10 * time.Millisecond
	t.Cleanup(func() { nodeClientPoll = old })
	dir := t.TempDir()
	cert := filepath.Join(dir, "kubelet-client-current.pem")
	kc := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://192.0.2.1:6443"}}]
users: [{name: u, user: {client-certificate: `+cert+`, client-key: `+cert+`}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := nodeClient(kc); err == nil {
		t.Fatal("nodeClient made a client without the client certificate: the test proves nothing")
	}
	type res struct {
		ok  bool
		err error
	}
	got := make(chan res, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() {
		cs, err := waitNodeClient(ctx, kc)
		got <- res{cs != nil, err}
	}()
	// The certificate appears later, as the kubelet writes it.
	if err := os.WriteFile(cert, []byte("not parsed here"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := <-got; !r.ok || r.err != nil {
		t.Fatalf("waitNodeClient: client %v, %v", r.ok, r.err)
	}
	// Never readable: only the context ends the wait.
	os.Remove(cert)
	short, stop := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer stop()
	if cs, err := waitNodeClient(short, kc); cs != nil || err == nil {
		t.Fatalf("waitNodeClient without a certificate: %v, %v", cs, err)
	}
}
