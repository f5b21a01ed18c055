package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/cni/eveni"
	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/tests/containerd"
	"github.com/lf-edge/evelet/tests/evesim"
)

// eveNIContainerd starts a containerd of its own whose pod network is the
// eve-ni plugin on the EVE NI named ni, reading the settings the device's
// agent writes (settingsFile). Until evelet-cni (the meta plugin) is the
// pod network, this is how a kubelet pod reaches an EVE NI: eve-ni as the
// only network, eth0 on the NI, with the default route.
func eveNIContainerd(t *testing.T, ctx context.Context, ni, settingsFile string) *containerd.Containerd {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "evni-ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin, conf := filepath.Join(dir, "cni-bin"), filepath.Join(dir, "cni-conf")
	if out, err := goBuild(ctx, filepath.Join(bin, "eve-ni"), "./cmd/eve-ni"); err != nil {
		t.Fatalf("building eve-ni: %v: %s", err, out)
	}
	sys, err := os.ReadDir("/usr/lib/cni")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range sys { // containerd also needs loopback
		if err := os.Symlink(filepath.Join("/usr/lib/cni", e.Name()), filepath.Join(bin, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(conf, 0o755); err != nil {
		t.Fatal(err)
	}
	// containerd 1.6 speaks CNI 1.0.0; "00-" sorts before the harness's
	// bridge conflist, and containerd loads only the first.
	list := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"evni-pods","plugins":[{"type":"eve-ni","networkInstance":%q,"defaultRoute":true,"eveniConfig":%q}]}`, ni, settingsFile)
	if err := os.WriteFile(filepath.Join(conf, "00-eve-ni.conflist"), []byte(list), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := containerd.Start(ctx, containerd.Options{
		Dir: filepath.Join(dir, "containerd"), SandboxImage: images.PauseRef, CNIBinDir: bin, CNIConfDir: conf,
		PodCIDR: "10.244.6.0/24", BridgeName: "evni-unused0", NetworkName: "evni-default", RestrictOOMScoreAdj: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(c.LogPath())
			t.Logf("eve-ni containerd log tail:\n%s", tail(string(b), 40))
		}
		c.Stop()
	})
	// The suite's pause and busybox tarballs, built once in setup.
	if err := c.ImportImages(ctx, env.images...); err != nil {
		t.Fatal(err)
	}
	return c
}

func sleeperPod(name, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{
				Name: "main", Image: images.BusyboxRef, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sleep", "3600"},
			}},
		},
	}
}

func waitPodIP(t *testing.T, ctx context.Context, cs kubernetes.Interface, name string) net.IP {
	t.Helper()
	var ip net.IP
	waitFor(t, 2*time.Minute, name+" Running with an IP", func() (bool, error) {
		p, err := cs.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			return false, fmt.Errorf("phase %s, ip %q", p.Status.Phase, p.Status.PodIP)
		}
		ip = net.ParseIP(p.Status.PodIP)
		return true, nil
	})
	return ip
}

// waitPodEvent waits for an event on pod name containing want, and checks
// that `kubectl describe pod` shows it.
func waitPodEvent(t *testing.T, ctx context.Context, cs kubernetes.Interface, name, want string) {
	t.Helper()
	waitFor(t, 2*time.Minute, name+" event with "+want, func() (bool, error) {
		ev, err := cs.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
		if err != nil {
			return false, err
		}
		var msgs []string
		for _, e := range ev.Items {
			if strings.Contains(e.Message, want) {
				t.Logf("%s: %s", name, e.Message)
				return true, nil
			}
			msgs = append(msgs, e.Message)
		}
		return false, fmt.Errorf("events: %q", msgs)
	})
	out, err := env.cp.Kubectl(ctx, "describe", "pod", "-n", "default", name)
	if err != nil || !strings.Contains(out, want) {
		t.Errorf("kubectl describe pod %s lacks %q: %v\n%s", name, want, err, tail(out, 15))
	}
}

func nodeLabels(ctx context.Context, cs kubernetes.Interface, node string) (map[string]string, error) {
	n, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for k, v := range n.Labels {
		if strings.HasPrefix(k, eveni.LabelPrefix) {
			out[k] = v
		}
	}
	return out, nil
}

func waitNILabels(t *testing.T, ctx context.Context, cs kubernetes.Interface, node string, want ...string) {
	t.Helper()
	waitFor(t, 2*time.Minute, fmt.Sprintf("node NI labels %v", want), func() (bool, error) {
		got, err := nodeLabels(ctx, cs, node)
		if err != nil {
			return false, err
		}
		if len(got) != len(want) {
			return false, fmt.Errorf("labels %v", got)
		}
		for _, w := range want {
			if got[eveni.LabelPrefix+w] != "true" {
				return false, fmt.Errorf("labels %v", got)
			}
		}
		return true, nil
	})
}

// TestEVENetworkInstances: a simulated EVE device with a Local NI (bridge,
// dnsmasq, NAT) and a Switch NI made as zedrouter makes them joins the
// real control plane. The node is labelled with exactly the activated NIs
// the owner gives to Kubernetes; pods whose network is the Local NI (eve-ni
// as the pod network of a containerd of the test's own, through the real
// kubelet and evelet's CRI shim) get distinct addresses from the owner's
// reserved range and reach each other and the NI's gateway; an exhausted
// range and an NI the owner took back are pod events; deleting the pods
// frees their addresses and veths; labels follow NIs and the owner.
func TestEVENetworkInstances(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 15*time.Minute)
	cs := env.cp.Client()
	d, sim := newSimDevice(t, "NI Device")
	node := "ni-device"
	deleteNodeAtEnd(t, node)

	nw := evesim.NewNetwork(sim.Root, "evni", filepath.Join(d.dir, "evesim-net"))
	t.Cleanup(func() {
		if err := nw.Close(); err != nil {
			t.Errorf("removing the simulated NIs: %v", err)
		}
	})
	local, err := nw.AddLocalNI(evesim.LocalNIOptions{Name: "Shop Floor", BridgeNum: 1, Subnet: "10.98.1.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	sw, err := nw.AddSwitchNI(evesim.SwitchNIOptions{Name: "ext", BridgeNum: 2, ExternalSubnet: "192.168.98.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	ctrd := eveNIContainerd(t, ctx, "Shop Floor", filepath.Join(d.runDir(), "eve-ni.json"))
	d.source = append(d.source, "--containerd="+ctrd.Endpoint())
	d.start()

	cl := simCluster(t, env.cp, "prod", "11111111-2222-4333-8444-555555555555")
	grant := "Shop Floor=10.98.1.200-10.98.1.201," + sw.Status.UUID.String()
	cl.ConfigItems["evelet.policy.network-instances"] = grant
	if err := sim.SetCluster(cl); err != nil {
		t.Fatal(err)
	}
	waitNodeReady(t, node, 3*time.Minute)
	waitNILabels(t, ctx, cs, node, "shop-floor", "ext")

	// Two pods on the Local NI: distinct addresses from the reserved range.
	for _, n := range []string{"ni-a", "ni-b"} {
		if _, err := cs.CoreV1().Pods("default").Create(ctx, sleeperPod(n, node), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { deletePod(t, context.Background(), cs, n) })
	}
	a, b := waitPodIP(t, ctx, cs, "ni-a"), waitPodIP(t, ctx, cs, "ni-b")
	reserved := map[string]bool{"10.98.1.200": true, "10.98.1.201": true}
	if a.Equal(b) || !reserved[a.String()] || !reserved[b.String()] {
		t.Fatalf("pod IPs %s and %s: want the two addresses of the reserved range", a, b)
	}
	for _, c := range [][]string{{"ni-a", b.String()}, {"ni-b", a.String()}, {"ni-a", local.Status.Gateway.String()}} {
		out, err := env.cp.Kubectl(ctx, "exec", "-n", "default", c[0], "--", "/bin/busybox", "ping", "-c1", "-W5", c[1])
		if err != nil {
			t.Errorf("%s cannot reach %s: %v\n%s", c[0], c[1], err, out)
		}
	}

	// A third pod finds the range exhausted: a pod event, nothing attached.
	if _, err := cs.CoreV1().Pods("default").Create(ctx, sleeperPod("ni-c", node), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPodEvent(t, ctx, cs, "ni-c", "reserved range exhausted")
	deletePod(t, ctx, cs, "ni-c")

	// Deleting a pod frees its address and its veth.
	deletePod(t, ctx, cs, "ni-b")
	alloc := filepath.Join(d.stateDir(), "cni", "eve-ni", local.Status.UUID.String(), "allocations.json")
	waitFor(t, time.Minute, "ni-b's address freed", func() (bool, error) {
		ips, err := allocatedIPs(alloc)
		_, held := ips[b.String()]
		return err == nil && !held, fmt.Errorf("allocations %v (%v)", ips, err)
	})
	vethsOnBridge := func() (int, error) {
		br, err := netlink.LinkByName(local.Status.BridgeName)
		if err != nil {
			return 0, err
		}
		links, err := netlink.LinkList()
		n := 0
		for _, l := range links {
			if l.Attrs().MasterIndex == br.Attrs().Index {
				n++
			}
		}
		return n, err
	}
	waitFor(t, time.Minute, "one pod veth left on the NI bridge", func() (bool, error) {
		n, err := vethsOnBridge()
		return n == 1, fmt.Errorf("%d ports (%v)", n, err)
	})

	// The NI goes down in EVE: its label goes; it comes back: so does it.
	if err := local.SetActivated(false); err != nil {
		t.Fatal(err)
	}
	waitNILabels(t, ctx, cs, node, "ext")
	if err := local.SetActivated(true); err != nil {
		t.Fatal(err)
	}
	waitNILabels(t, ctx, cs, node, "shop-floor", "ext")

	// The owner takes the Local NI back: its label goes, and a new pod is
	// refused with the reason in its events.
	items := map[string]string{"evelet.apiserver-url": env.cp.URL(), "evelet.policy.network-instances": sw.Status.UUID.String()}
	if err := sim.SetConfigItems(items); err != nil {
		t.Fatal(err)
	}
	waitNILabels(t, ctx, cs, node, "ext")
	if _, err := cs.CoreV1().Pods("default").Create(ctx, sleeperPod("ni-d", node), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPodEvent(t, ctx, cs, "ni-d", "is not given to Kubernetes by the device owner")
	deletePod(t, ctx, cs, "ni-d")

	deletePod(t, ctx, cs, "ni-a")
	waitFor(t, time.Minute, "no pod veth on the NI bridge", func() (bool, error) {
		n, err := vethsOnBridge()
		return n == 0, fmt.Errorf("%d ports (%v)", n, err)
	})
	// eve-ni's DEL removes the veth before it frees the address: wait
	// for the release too, rather than reading the allocations once.
	waitFor(t, time.Minute, "no allocation left after every pod is gone", func() (bool, error) {
		ips, err := allocatedIPs(alloc)
		return err == nil && len(ips) == 0, fmt.Errorf("allocations %v (%v)", ips, err)
	})

	// The controller takes the device out of the cluster: once it has
	// left, eve-ni's nftables table is gone from the host (before, an
	// empty `bridge evelet_eveni` stayed forever).
	if err := sim.RemoveCluster(); err != nil {
		t.Fatal(err)
	}
	d.waitStatus(3*time.Minute, "Left", func(s agent.Status) bool { return s.Phase == agent.PhaseLeft })
	out, err := exec.CommandContext(ctx, "nft", "list", "tables", "bridge").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list tables: %v\n%s", err, out)
	}
	if strings.Contains(string(out), eveni.GuardTable) {
		t.Errorf("after leave the host still has eve-ni's table:\n%s", out)
	}
}

// allocatedIPs reads an eve-ni allocation file: address -> owner.
func allocatedIPs(path string) (map[string]any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st struct{ IPs map[string]any }
	err = json.Unmarshal(b, &st)
	return st.IPs, err
}

// goBuild builds a package of the evelet module.
func goBuild(ctx context.Context, out, pkg string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = env.root
	return cmd.CombinedOutput()
}

// TestNetworkAttachmentsEVENISwitchDHCP: through evelet-cni and a NAD, a
// pod's net1 is on a simulated EVE Switch NI, gets its address from the
// external network's own DHCP server (via the CNI dhcp daemon the agent
// runs), and reaches the external host; deleting the pod leaves no port on
// the NI's bridge.
func TestNetworkAttachmentsEVENISwitchDHCP(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 20*time.Minute)
	cs := env.cp.Client()
	dc, err := dynamic.NewForConfig(env.cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	n := newNADEVEDevice(t, ctx, dc, "Edge NAD Switch", "edge-nad-switch", "evsw")
	node := n.node
	sw, err := n.nw.AddSwitchNI(evesim.SwitchNIOptions{Name: "plant net", BridgeNum: 63, ExternalSubnet: "192.168.63.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	createNAD(t, ctx, dc, "eve-plant", `{"cniVersion":"1.1.0","name":"eve-plant","type":"eve-ni","networkInstance":"plant net","ipam":{"type":"dhcp"}}`)
	n.join(t, "11111111-2222-4333-8444-777777777777", map[string]string{"evelet.policy.network-instances": "plant net"},
		"--cni-allowed-ipam=dhcp,static")
	waitNILabels(t, ctx, cs, node, "plant-net")

	p := nadPod("nad-plant", node, "eve-plant", "busybox ip -o addr; busybox ip -o link; sleep 3600")
	if _, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.CoreV1().Pods("default").Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	})
	waitNADPodRunning(t, ctx, p.Name)
	logs := podLogs(t, ctx, p.Name)
	var net1 string
	for _, l := range strings.Split(logs, "\n") {
		if f := strings.Fields(l); len(f) > 3 && f[1] == "net1" && f[2] == "inet" {
			net1 = f[3]
		}
	}
	ip, _, err := net.ParseCIDR(net1)
	if err != nil || ip.To4() == nil || ip.To4()[2] != 63 || ip.To4()[3] < 100 || ip.To4()[3] > 150 {
		t.Fatalf("net1 address %q, want a lease from the external DHCP server (192.168.63.100-150)\n%s", net1, logs)
	}
	out, err := env.cp.Kubectl(ctx, "exec", "-n", "default", p.Name, "--", "/bin/busybox", "ping", "-c1", "-W5", sw.External.IP.String())
	if err != nil {
		t.Errorf("pod cannot reach the external host %s: %v\n%s", sw.External.IP, err, out)
	}
	deletePod(t, ctx, cs, p.Name)
	waitFor(t, 2*time.Minute, "no pod port left on the Switch NI bridge", func() (bool, error) {
		left := bridgePorts(t, sw.Status.BridgeName)
		// The NI's own port to the external network stays.
		return len(left) == 1, fmt.Errorf("ports %v", left)
	})
}
