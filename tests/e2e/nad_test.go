package e2e

import (
	"bytes"
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

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/utils/ptr"

	"github.com/lf-edge/evelet/cni/annotation"
	"github.com/lf-edge/evelet/cni/nad"
	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/internal/layout"
	"github.com/lf-edge/evelet/policy"
	"github.com/lf-edge/evelet/tests/containerd"
	"github.com/lf-edge/evelet/tests/evesim"
)

// The NAD test runs its own containerd: the agent installs evelet-cni into
// the runtime's CNI bin dir, and the shared harness's is the system's
// /usr/lib/cni. Its networks: the default pod network on nadBridges[0],
// and two NADs on nadBridges[1] and [2].
var nadBridges = []string{"evelet-nad0", "evelet-nad1", "evelet-nad2"}

const nadDefaultNetwork = "evelet-nad-default"

// applyYAML creates every object of a multi-document YAML (the kinds this
// test ships), ignoring AlreadyExists.
func applyYAML(t testing.TB, ctx context.Context, dc dynamic.Interface, doc []byte) {
	t.Helper()
	gvr := map[string]schema.GroupVersionResource{
		"Namespace":                {Version: "v1", Resource: "namespaces"},
		"ServiceAccount":           {Version: "v1", Resource: "serviceaccounts"},
		"Secret":                   {Version: "v1", Resource: "secrets"},
		"ClusterRole":              {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
		"ClusterRoleBinding":       {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
		"CustomResourceDefinition": {Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"},
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(doc), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			break
		}
		if len(u.Object) == 0 {
			continue
		}
		r, ok := gvr[u.GetKind()]
		if !ok {
			t.Fatalf("applyYAML: kind %s not mapped", u.GetKind())
		}
		var err error
		if ns := u.GetNamespace(); ns != "" {
			_, err = dc.Resource(r).Namespace(ns).Create(ctx, &u, metav1.CreateOptions{})
		} else {
			_, err = dc.Resource(r).Create(ctx, &u, metav1.CreateOptions{})
		}
		if err != nil && !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
}

func createNAD(t *testing.T, ctx context.Context, dc dynamic.Interface, name, config string) {
	t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
		"metadata": map[string]any{"name": name, "namespace": "default"},
		"spec":     map[string]any{"config": config},
	}}
	if _, err := dc.Resource(nad.GVR).Namespace("default").Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatalf("NAD %s: %v", name, err)
	}
	t.Cleanup(func() {
		dc.Resource(nad.GVR).Namespace("default").Delete(context.Background(), name, metav1.DeleteOptions{})
	})
}

func nadPod(name, node, networks, cmd string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default",
			Annotations: map[string]string{annotation.NetworksKey: networks}},
		Spec: corev1.PodSpec{
			NodeSelector:                  map[string]string{corev1.LabelHostname: node},
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{
				Name: "main", Image: images.BusyboxRef, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sh", "-c", cmd},
			}},
		},
	}
}

// bridgePorts lists the interfaces enslaved to a bridge on the host.
func bridgePorts(t *testing.T, br string) []string {
	out, err := exec.Command("ip", "-o", "link", "show", "master", br).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "does not exist") {
			return nil
		}
		t.Fatalf("ip link show master %s: %v: %s", br, err, out)
	}
	var ports []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			ports = append(ports, strings.TrimSuffix(f[1], ":"))
		}
	}
	return ports
}

// hostLocalLeases are host-local's reserved addresses of a network.
func hostLocalLeases(network string) []string {
	ents, _ := os.ReadDir(filepath.Join("/var/lib/cni/networks", network))
	var out []string
	for _, e := range ents {
		if n := e.Name(); n != "lock" && !strings.HasPrefix(n, "last_reserved_ip") {
			out = append(out, n)
		}
	}
	return out
}

// waitSandboxEvent waits for a pod event containing want (the sandbox
// refusal), checks kubectl describe shows it and that no container ran.
func waitSandboxEvent(t *testing.T, ctx context.Context, name, want string) {
	t.Helper()
	cs := env.cp.Client()
	waitFor(t, 2*time.Minute, name+": event "+want, func() (bool, error) {
		ev, err := cs.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
		if err != nil {
			return false, err
		}
		var msgs []string
		for _, e := range ev.Items {
			if strings.Contains(e.Message, want) {
				t.Logf("%s: %s: %s", name, e.Reason, e.Message)
				return true, nil
			}
			msgs = append(msgs, e.Message)
		}
		return false, fmt.Errorf("events %q", msgs)
	})
	out, err := env.cp.Kubectl(ctx, "describe", "pod", "-n", "default", name)
	if err != nil || !strings.Contains(out, want) {
		t.Errorf("kubectl describe pod %s lacks %q: %v\n%s", name, want, err, tail(out, 15))
	}
	p, err := cs.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range p.Status.ContainerStatuses {
		if s.State.Running != nil || s.State.Terminated != nil {
			t.Errorf("%s: container ran: %+v", name, s.State)
		}
	}
}

// startNADRuntime starts the test's own containerd whose CNI bin dir holds
// links to the system plugins, for the agent to install evelet-cni into.
func startNADRuntime(t *testing.T, ctx context.Context) (*containerd.Containerd, string) {
	t.Helper()
	work, err := os.MkdirTemp("/tmp", "evnad-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountAll(t, work); os.RemoveAll(work) })
	t.Cleanup(func() {
		for _, br := range nadBridges {
			exec.Command("ip", "link", "del", br).Run()
		}
		os.RemoveAll("/var/lib/cni/networks/evelet-nad-a")
	})

	// The runtime's CNI bin dir: the system plugins, and what the agent
	// installs.
	binDir := filepath.Join(work, "cni-bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	sys, _ := filepath.Glob("/usr/lib/cni/*")
	for _, p := range sys {
		if err := os.Symlink(p, filepath.Join(binDir, filepath.Base(p))); err != nil {
			t.Fatal(err)
		}
	}
	ctrd, err := containerd.Start(ctx, containerd.Options{
		Dir: filepath.Join(work, "containerd"), CNIBinDir: binDir, SandboxImage: images.PauseRef,
		PodCIDR: "10.244.66.0/24", BridgeName: nadBridges[0], NetworkName: nadDefaultNetwork, RestrictOOMScoreAdj: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctrd.Stop() })
	// The suite's pause and busybox tarballs, built once in setup.
	if err := ctrd.ImportImages(ctx, env.images...); err != nil {
		t.Fatal(err)
	}
	return ctrd, binDir
}

// setupNADCluster creates the NAD CRD and applies the shipped RBAC, and
// returns a token of the evelet-network ServiceAccount.
func setupNADCluster(t *testing.T, ctx context.Context, dc dynamic.Interface) string {
	t.Helper()
	cs := env.cp.Client()
	crd, err := os.ReadFile(filepath.Join(env.root, "deploy", "network-attachment-definition-crd.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	applyYAML(t, ctx, dc, crd)
	waitFor(t, time.Minute, "NAD CRD served", func() (bool, error) {
		_, err := dc.Resource(nad.GVR).Namespace("default").List(ctx, metav1.ListOptions{})
		return err == nil, err
	})
	rbac, err := os.ReadFile(filepath.Join(env.root, "deploy", "evelet-network-rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	applyYAML(t, ctx, dc, rbac)
	var netToken string
	waitFor(t, time.Minute, "evelet-network token", func() (bool, error) {
		tr, err := cs.CoreV1().ServiceAccounts("evelet-system").CreateToken(ctx, "evelet-network",
			&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
		if err != nil {
			return false, err
		}
		netToken = tr.Status.Token
		return true, nil
	})
	return netToken
}

// nadAgentFlags points the device's agent at the NAD runtime with
// evelet-cni on.
func nadAgentFlags(ctrd *containerd.Containerd, binDir, plugins string) []string {
	return []string{"--containerd=" + ctrd.Endpoint(), "--cni-bin-dir=" + binDir, "--cni-conf-dir=" + ctrd.CNIConfDir(),
		"--cni-default-network=" + nadDefaultNetwork, "--cni-allowed-plugins=" + plugins, "--cni-allowed-ipam=host-local,static",
		// Often, so that every NAD test's pods live through GCs.
		"--cni-gc-interval=15s"}
}

// nadEVEDevice is a simulated EVE device whose agent runs evelet-cni on the
// NAD runtime, with its simulated network instances (nw). The test adds
// NIs and NADs, then calls join.
type nadEVEDevice struct {
	d        *device
	sim      *evesim.Device
	nw       *evesim.Network
	node     string
	ctrd     *containerd.Containerd
	binDir   string
	netToken string
}

// newNADEVEDevice starts the NAD runtime, sets the cluster up for NADs and
// prepares the device (not started); netPrefix names the NIs' links.
func newNADEVEDevice(t *testing.T, ctx context.Context, dc dynamic.Interface, name, node, netPrefix string) *nadEVEDevice {
	t.Helper()
	n := &nadEVEDevice{node: node}
	n.ctrd, n.binDir = startNADRuntime(t, ctx)
	n.netToken = setupNADCluster(t, ctx, dc)
	n.d, n.sim = newSimDevice(t, name)
	deleteNodeAtEnd(t, node)
	n.nw = evesim.NewNetwork(n.sim.Root, netPrefix, filepath.Join(n.d.dir, "evesim-net"))
	t.Cleanup(func() {
		if err := n.nw.Close(); err != nil {
			t.Errorf("removing the simulated NIs: %v", err)
		}
	})
	return n
}

// join starts the agent with evelet-cni (eve-ni allowed) and extraFlags,
// gives the device cluster clusterID with the evelet-network token in the
// EVE cluster token's envelope and the owner's items, and waits for Ready.
func (n *nadEVEDevice) join(t *testing.T, clusterID string, items map[string]string, extraFlags ...string) {
	t.Helper()
	n.d.source = append(n.d.source, nadAgentFlags(n.ctrd, n.binDir, "eve-ni")...)
	n.d.source = append(n.d.source, extraFlags...)
	n.d.start()
	c := simCluster(t, env.cp, "prod", clusterID)
	envelope, err := json.Marshal(map[string]string{"token": c.Token, "networkToken": n.netToken})
	if err != nil {
		t.Fatal(err)
	}
	c.Token = string(envelope)
	for k, v := range items {
		c.ConfigItems[k] = v
	}
	if err := n.sim.SetCluster(c); err != nil {
		t.Fatal(err)
	}
	waitNodeReady(t, n.node, 4*time.Minute)
}

// waitNADPodRunning waits for a pod of the default namespace to run.
func waitNADPodRunning(t *testing.T, ctx context.Context, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	waitFor(t, 3*time.Minute, name+" Running", func() (bool, error) {
		p, err := env.cp.Client().CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pod = p
		return p.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s %v", p.Status.Phase, p.Status.ContainerStatuses)
	})
	return pod
}

// podLogsUntil waits until the pod's logs satisfy done, and returns them.
func podLogsUntil(t *testing.T, ctx context.Context, name, what string, done func(logs string) bool) string {
	t.Helper()
	var logs string
	waitFor(t, time.Minute, name+" "+what, func() (bool, error) {
		b, err := env.cp.Client().CoreV1().Pods("default").GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
		logs = string(b)
		return err == nil && done(logs), fmt.Errorf("logs %q: %v", logs, err)
	})
	return logs
}

// podLogs waits for the pod's "ip -o addr; ip -o link" output.
func podLogs(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	return podLogsUntil(t, ctx, name, "logs", func(l string) bool { return strings.Contains(l, "link/") })
}

// podRoutes waits for the pod's "ip route" output, which its command
// prints between ROUTES and END.
func podRoutes(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	between := func(l string) (string, bool) {
		_, after, ok := strings.Cut(l, "ROUTES\n")
		r, _, ok2 := strings.Cut(after, "END")
		return strings.TrimSpace(r), ok && ok2
	}
	r, _ := between(podLogsUntil(t, ctx, name, "routes", func(l string) bool { _, ok := between(l); return ok }))
	return r
}

// defaultRouteLines are the "default ..." lines of "ip route".
func defaultRouteLines(routes string) []string {
	var out []string
	for _, l := range strings.Split(routes, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "default") {
			out = append(out, strings.Join(strings.Fields(l), " "))
		}
	}
	return out
}

// nadGrace is the grace period of the pod deleted while the apiserver is
// down: long enough to see the kubelet start killing it and stop the
// apiserver before the kubelet tears the sandbox down (the container
// ignores SIGTERM, so the kubelet waits the whole period).
const nadGrace = 45

// TestNetworkAttachments: a pod with two NetworkAttachmentDefinitions gets
// eth0, net1 and net2 with the MAC and IP it asked for and a right
// network-status; a pod's "default-route" moves its default route to the
// network it names; bad input is a clear pod event with nothing attached;
// deleting the pod through the API, with the apiserver stopped while the
// pod is Terminating, leaves no interface, lease or cache entry, and the
// node recovers when the apiserver is back.
func TestNetworkAttachments(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 20*time.Minute)
	cs := env.cp.Client()
	dc, err := dynamic.NewForConfig(env.cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctrd, binDir := startNADRuntime(t, ctx)
	netToken := setupNADCluster(t, ctx, dc)

	createNAD(t, ctx, dc, "net-a", `{"cniVersion":"1.0.0","name":"evelet-nad-a","type":"bridge","bridge":"evelet-nad1",
	  "ipam":{"type":"host-local","subnet":"10.246.61.0/24"}}`)
	createNAD(t, ctx, dc, "net-b", `{"cniVersion":"1.0.0","name":"evelet-nad-b","plugins":[
	  {"type":"bridge","bridge":"evelet-nad2","ipam":{"type":"static"},"capabilities":{"ips":true}},
	  {"type":"tuning","capabilities":{"mac":true}}]}`)
	createNAD(t, ctx, dc, "notjson", `{"cniVersion":`)

	node := "edge-nad"
	deleteNodeAtEnd(t, node)
	j := joinFor(node, newToken(t))
	j.NetworkToken = netToken
	d := newDevice(t, j)
	// --containerd again: the last one wins, the NAD runtime.
	d.source = append([]string{"--join-file=" + d.joinPath}, nadAgentFlags(ctrd, binDir, "bridge,tuning")...)
	d.start()
	waitNodeReady(t, node, 4*time.Minute)
	st := layout.State{Dir: d.stateDir()}
	if fi, err := os.Stat(st.CNI().NetworkKubeconfig()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("evelet-network kubeconfig: %v %v", fi, err)
	}

	// A pod with two networks.
	const mac, ipB = "02:00:00:00:0b:01", "10.246.62.10/24"
	multi := nadPod("nad-multi", node, `[{"name":"net-a"},{"name":"net-b","mac":"`+mac+`","ips":["`+ipB+`"]}]`,
		"trap '' TERM; busybox ip -o addr; busybox ip -o link; sleep 3600")
	multi.Spec.TerminationGracePeriodSeconds = ptr.To[int64](nadGrace)
	if _, err := cs.CoreV1().Pods("default").Create(ctx, multi, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.CoreV1().Pods("default").Delete(context.Background(), multi.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	})
	pod := waitNADPodRunning(t, ctx, multi.Name)
	logs := podLogs(t, ctx, multi.Name)
	t.Logf("pod's interfaces:\n%s", logs)
	for _, want := range []string{": eth0 ", "inet 10.244.66.", ": net1 ", "inet 10.246.61.", ": net2 ", "inet " + ipB, "link/ether " + mac} {
		if !strings.Contains(logs, want) {
			t.Errorf("pod lacks %q", want)
		}
	}
	var status []annotation.NetworkStatus
	if err := json.Unmarshal([]byte(pod.Annotations[annotation.StatusKey]), &status); err != nil {
		t.Fatalf("network-status %q: %v", pod.Annotations[annotation.StatusKey], err)
	}
	if len(status) != 3 || status[0].Name != nadDefaultNetwork || !status[0].Default || status[0].Interface != "eth0" ||
		!strings.HasPrefix(strings.Join(status[0].IPs, ","), "10.244.66.") || status[0].IPs[0] != pod.Status.PodIP ||
		status[1].Name != "default/net-a" || status[1].Interface != "net1" || !strings.HasPrefix(strings.Join(status[1].IPs, ","), "10.246.61.") ||
		status[2].Name != "default/net-b" || status[2].Interface != "net2" || status[2].MAC != mac || strings.Join(status[2].IPs, ",") != "10.246.62.10" {
		t.Errorf("network-status wrong: %+v", status)
	}
	// One AddedInterface event per network, in multus's words, for
	// kubectl describe (written with the evelet-network credential).
	waitPodEvent(t, ctx, cs, "nad-multi", "Add net1 ["+status[1].IPs[0]+"/")
	waitPodEvent(t, ctx, cs, "nad-multi", "] from default/net-a")
	waitPodEvent(t, ctx, cs, "nad-multi", "Add net2 [10.246.62.10/")
	waitPodEvent(t, ctx, cs, "nad-multi", "] from default/net-b")
	waitPodEvent(t, ctx, cs, "nad-multi", "Add eth0 ["+pod.Status.PodIP+"/")
	if p := bridgePorts(t, "evelet-nad1"); len(p) != 1 {
		t.Errorf("evelet-nad1 ports %v, want the pod's one veth", p)
	}

	// "default-route": net-a's gateway (host-local's default, .1) becomes
	// the pod's only default route; eth0 loses its own.
	route := nadPod("nad-route", node, `[{"name":"net-a","default-route":["10.246.61.1"]}]`,
		"echo ROUTES; busybox ip route; echo END; sleep 3600")
	if _, err := cs.CoreV1().Pods("default").Create(ctx, route, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	routePod := waitNADPodRunning(t, ctx, route.Name)
	routes := podRoutes(t, ctx, route.Name)
	t.Logf("routes of %s:\n%s", route.Name, routes)
	if got := defaultRouteLines(routes); len(got) != 1 || !strings.HasPrefix(got[0], "default via 10.246.61.1 dev net1") {
		t.Errorf("default routes %q, want only via 10.246.61.1 dev net1", got)
	}
	status = nil
	if err := json.Unmarshal([]byte(routePod.Annotations[annotation.StatusKey]), &status); err != nil {
		t.Fatalf("network-status %q: %v", routePod.Annotations[annotation.StatusKey], err)
	}
	if len(status) != 2 || !status[0].Default || status[0].DefaultRoute != nil ||
		status[1].Name != "default/net-a" || strings.Join(status[1].DefaultRoute, ",") != "10.246.61.1" {
		t.Errorf("network-status of %s wrong: %+v", route.Name, status)
	}
	// A gateway net-a does not have is a clear refusal.
	if _, err := cs.CoreV1().Pods("default").Create(ctx, nadPod("nad-badroute", node, `[{"name":"net-a","default-route":["10.246.61.99"]}]`, "sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSandboxEvent(t, ctx, "nad-badroute", `"default-route": 10.246.61.99 is not a gateway of network default/net-a (interface net1)`)
	deletePod(t, ctx, cs, "nad-badroute")
	deletePod(t, ctx, cs, route.Name)
	waitFor(t, 2*time.Minute, "nothing left of nad-route", func() (bool, error) {
		p, l := bridgePorts(t, "evelet-nad1"), hostLocalLeases("evelet-nad-a")
		return len(p) == 1 && len(l) == 1, fmt.Errorf("evelet-nad1 ports %v, leases %v, want nad-multi's only", p, l)
	})

	// A network outage: the apiserver stops and nad-outage's sandbox dies.
	// The kubelet makes a new one, as on any node; the CRI shim judges the
	// pod as last read and evelet-cni attaches the pod's last networks
	// (same MAC and static IP), neither able to read the pod.
	const macOutage, ipOutage = "02:00:00:00:0b:02", "10.246.62.11/24"
	outage := nadPod("nad-outage", node, `[{"name":"net-b","mac":"`+macOutage+`","ips":["`+ipOutage+`"]}]`, "sleep 3600")
	if _, err := cs.CoreV1().Pods("default").Create(ctx, outage, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	recreateDuringOutage(t, ctx, d, ctrd, waitNADPodRunning(t, ctx, outage.Name), "net1", macOutage, ipOutage)
	waitNodeReady(t, node, 3*time.Minute)
	deletePod(t, ctx, cs, outage.Name)
	waitFor(t, 2*time.Minute, "nothing left of nad-outage", func() (bool, error) {
		p, l := bridgePorts(t, "evelet-nad2"), hostLocalLeases("evelet-nad-a")
		return len(p) == 1 && len(l) == 1, fmt.Errorf("evelet-nad2 ports %v, evelet-nad-a leases %v, want nad-multi's only", p, l)
	})

	// Bad input: each a clear event, nothing attached.
	for _, c := range []struct{ name, networks, want string }{
		{"nad-unknown", "nope", "NetworkAttachmentDefinition default/nope not found"},
		{"nad-malformed", `[{"name":"net-a"`, "k8s.v1.cni.cncf.io/networks: not a valid JSON list"},
		{"nad-dupif", "net-a@x,net-b@x", `interface "x" is already used by network 1`},
		{"nad-notjson", "notjson", "NetworkAttachmentDefinition default/notjson: CNI config is not valid JSON"},
	} {
		if _, err := cs.CoreV1().Pods("default").Create(ctx, nadPod(c.name, node, c.networks, "sleep 3600"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitSandboxEvent(t, ctx, c.name, c.want)
		deletePod(t, ctx, cs, c.name)
	}
	// The agent's CNI GC (every 15 s here) keeps nad-multi's attachments:
	// wait for one that ran after the refused pods, then check.
	gcs := strings.Count(d.log(), "CNI GC done")
	waitFor(t, time.Minute, "a CNI GC by the agent", func() (bool, error) {
		n := strings.Count(d.log(), "CNI GC done")
		return n > gcs, fmt.Errorf("%d GCs done (%d before); agent log: %s", n, gcs, tail(d.log(), 5))
	})
	if p := bridgePorts(t, "evelet-nad1"); len(p) != 1 {
		t.Errorf("after the refused pods evelet-nad1 has ports %v, want only nad-multi's", p)
	}
	if p := bridgePorts(t, "evelet-nad2"); len(p) != 1 {
		t.Errorf("after the refused pods evelet-nad2 has ports %v, want only nad-multi's", p)
	}
	if l := hostLocalLeases("evelet-nad-a"); len(l) != 1 {
		t.Errorf("evelet-nad-a leases %v, want only nad-multi's", l)
	}
	recs, _ := filepath.Glob(filepath.Join(st.CNI().MetaState(), "attachments", "*.json"))
	if len(recs) != 1 {
		t.Errorf("attachment records %v, want nad-multi's", recs)
	}

	// The pod is deleted through the API; once the kubelet has started to
	// stop it (its Killing event) the apiserver stops. The container
	// ignores SIGTERM, so the kubelet tears the sandbox down only after
	// the grace period, with the apiserver down: evelet-cni's DEL works
	// from its record alone.
	conn, err := ctrd.DialCRI()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	sandboxes := func() ([]*runtimeapi.PodSandbox, error) {
		sb, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
			LabelSelector: map[string]string{"io.kubernetes.pod.uid": string(pod.UID)}}})
		if err != nil {
			return nil, err
		}
		return sb.Items, nil
	}
	readySandboxes := func() (int, error) {
		sb, err := sandboxes()
		n := 0
		for _, s := range sb {
			if s.State == runtimeapi.PodSandboxState_SANDBOX_READY {
				n++
			}
		}
		return n, err
	}
	if n, err := readySandboxes(); err != nil || n != 1 {
		t.Fatalf("ready sandboxes of nad-multi: %d %v", n, err)
	}

	if err := cs.CoreV1().Pods("default").Delete(ctx, multi.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](nadGrace)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the kubelet stopping nad-multi (Killing event)", func() (bool, error) {
		ev, err := cs.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + multi.Name + ",reason=Killing"})
		if err != nil {
			return false, err
		}
		return len(ev.Items) > 0, fmt.Errorf("no Killing event yet")
	})
	if err := env.cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	apiDown := time.Now()
	apiUp := false
	t.Cleanup(func() {
		if !apiUp {
			env.cp.StartAPIServer(context.Background())
		}
	})
	// Proof the teardown happens with the apiserver down: the sandbox is
	// still up now.
	if n, err := readySandboxes(); err != nil || n != 1 {
		t.Fatalf("nad-multi's sandbox was already torn down when the apiserver stopped (%d ready, %v): the grace period did not hold", n, err)
	}
	// Gone, not just NotReady: containerd marks the sandbox NotReady when
	// its pause process exits, before the CNI DEL has run; the kubelet
	// removes it after StopPodSandbox (network torn down) returned.
	waitFor(t, time.Duration(nadGrace)*time.Second+3*time.Minute, "the kubelet removing nad-multi's sandbox", func() (bool, error) {
		sb, err := sandboxes()
		return err == nil && len(sb) == 0, fmt.Errorf("%d sandboxes (%v)", len(sb), err)
	})
	t.Logf("sandbox removed %v after the apiserver stopped", time.Since(apiDown).Round(time.Second))
	for _, br := range nadBridges {
		if p := bridgePorts(t, br); len(p) != 0 {
			t.Errorf("%s still has ports %v after the sandbox stopped", br, p)
		}
	}
	if l := hostLocalLeases("evelet-nad-a"); len(l) != 0 {
		t.Errorf("evelet-nad-a leases left: %v", l)
	}
	recs, _ = filepath.Glob(filepath.Join(st.CNI().MetaState(), "attachments", "*.json"))
	if len(recs) != 0 {
		t.Errorf("attachment records left: %v", recs)
	}
	if r, _ := filepath.Glob(filepath.Join(st.CNI().MetaState(), "results", "*", "*")); len(r) != 0 {
		t.Errorf("libcni result cache left: %v", r)
	}
	apiBack := time.Now()
	if err := env.cp.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	apiUp = true
	// The node recovers: its lease is renewed again, it is Ready, and the
	// kubelet finishes the pod's deletion.
	waitLeaseRenewedAfter(t, node, apiBack, 3*time.Minute)
	waitNodeReady(t, node, 2*time.Minute)
	waitFor(t, 3*time.Minute, "nad-multi gone from the API", func() (bool, error) {
		_, err := cs.CoreV1().Pods("default").Get(ctx, multi.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), err
	})
	waitFor(t, 2*time.Minute, "nothing left of nad-multi", func() (bool, error) {
		var left []string
		for _, br := range nadBridges {
			left = append(left, bridgePorts(t, br)...)
		}
		left = append(left, hostLocalLeases("evelet-nad-a")...)
		r, _ := filepath.Glob(filepath.Join(st.CNI().MetaState(), "attachments", "*.json"))
		left = append(left, r...)
		return len(left) == 0, fmt.Errorf("left: %v", left)
	})

	// The join material loses its networkToken: the agent removes the
	// credential without restarting the kubelet; a pod asking for networks
	// is refused clearly, a pod without the annotation still runs (the
	// plugin reads it with the node's own credential).
	j.NetworkToken = ""
	d.writeJoin(j)
	waitFor(t, time.Minute, "evelet-network kubeconfig removed", func() (bool, error) {
		_, err := os.Stat(st.CNI().NetworkKubeconfig())
		return os.IsNotExist(err), err
	})
	if _, err := cs.CoreV1().Pods("default").Create(ctx, nadPod("nad-nocred", node, "net-a", "sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSandboxEvent(t, ctx, "nad-nocred", "asks for networks (default/net-a) but this node has no evelet-network credential")
	deletePod(t, ctx, cs, "nad-nocred")
	plain := nadPod("nad-plain", node, "", "sleep 3600")
	delete(plain.Annotations, annotation.NetworksKey)
	if _, err := cs.CoreV1().Pods("default").Create(ctx, plain, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitNADPodRunning(t, ctx, plain.Name)
	deletePod(t, ctx, cs, plain.Name)
}

// TestNetworkAttachmentsEVENI: on a simulated EVE device with a Local
// network instance the owner gives to Kubernetes, a pod with an eve-ni NAD
// gets net1 in the owner's reserved range through evelet-cni; a NAD naming
// an NI the device lacks is a clear pod event; deleting the pod leaves no
// port on the NI's bridge and no attachment record. The evelet-network
// token arrives in the EVE cluster token's envelope.
func TestNetworkAttachmentsEVENI(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 20*time.Minute)
	cs := env.cp.Client()
	dc, err := dynamic.NewForConfig(env.cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	n := newNADEVEDevice(t, ctx, dc, "Edge NAD EVE", "edge-nad-eve", "h6")
	d, node := n.d, n.node
	ni, err := n.nw.AddLocalNI(evesim.LocalNIOptions{Name: "nad-local", UUID: "6b2a7c1e-5d3f-4c2a-8e1b-000000000061",
		BridgeNum: 61, Subnet: "10.98.61.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	createNAD(t, ctx, dc, "eve-local", `{"cniVersion":"1.1.0","name":"eve-local","type":"eve-ni","networkInstance":"nad-local"}`)
	createNAD(t, ctx, dc, "eve-absent", `{"cniVersion":"1.1.0","name":"eve-absent","type":"eve-ni","networkInstance":"no-such-ni"}`)
	n.join(t, "11111111-2222-4333-8444-666666666666", map[string]string{policy.KeyNetworkInstances: "nad-local=10.98.61.200-10.98.61.210"})
	st := layout.State{Dir: d.stateDir()}
	if _, err := os.Stat(st.CNI().NetworkKubeconfig()); err != nil {
		t.Fatalf("evelet-network kubeconfig from the EVE envelope: %v", err)
	}

	// The pod takes its default route from the NI (an empty list: the
	// NI's gateway), which eve-ni gets as its own defaultRoute switch.
	p := nadPod("nad-eve", node, `[{"name":"eve-local","default-route":[]}]`,
		"busybox ip -o addr; busybox ip -o link; echo ROUTES; busybox ip route; echo END; sleep 3600")
	if _, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.CoreV1().Pods("default").Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	})
	pod := waitNADPodRunning(t, ctx, p.Name)
	logs := podLogs(t, ctx, p.Name)
	t.Logf("pod's interfaces:\n%s", logs)
	var net1 string
	for _, l := range strings.Split(logs, "\n") {
		if f := strings.Fields(l); len(f) > 3 && f[1] == "net1" && f[2] == "inet" {
			net1 = f[3]
		}
	}
	ip, _, err := net.ParseCIDR(net1)
	if err != nil || ip.To4() == nil || ip.To4()[2] != 61 || ip.To4()[3] < 200 || ip.To4()[3] > 210 {
		t.Fatalf("net1 address %q, want one in the owner's range 10.98.61.200-210", net1)
	}
	var status []annotation.NetworkStatus
	if err := json.Unmarshal([]byte(pod.Annotations[annotation.StatusKey]), &status); err != nil {
		t.Fatalf("network-status: %v", err)
	}
	gw := ni.Status.Gateway.String()
	if len(status) != 2 || status[1].Name != "default/eve-local" || status[1].Interface != "net1" || strings.Join(status[1].IPs, ",") != ip.String() ||
		strings.Join(status[1].DefaultRoute, ",") != gw {
		t.Errorf("network-status wrong: %+v", status)
	}
	routes := podRoutes(t, ctx, p.Name)
	t.Logf("routes of %s:\n%s", p.Name, routes)
	if got := defaultRouteLines(routes); len(got) != 1 || !strings.HasPrefix(got[0], "default via "+gw+" dev net1") {
		t.Errorf("default routes %q, want only via the NI gateway %s dev net1", got, gw)
	}
	bridge := ni.Status.BridgeName
	if ports := bridgePorts(t, bridge); len(ports) != 1 {
		t.Errorf("NI bridge %s ports %v, want the pod's veth", bridge, ports)
	}

	bad := nadPod("nad-eve-absent", node, "eve-absent", "sleep 3600")
	if _, err := cs.CoreV1().Pods("default").Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSandboxEvent(t, ctx, bad.Name, "network 1 (default/eve-absent, interface net1)")
	deletePod(t, ctx, cs, bad.Name)

	deletePod(t, ctx, cs, p.Name)
	waitFor(t, 2*time.Minute, "nothing left of nad-eve", func() (bool, error) {
		left := bridgePorts(t, bridge)
		r, _ := filepath.Glob(filepath.Join(st.CNI().MetaState(), "attachments", "*.json"))
		left = append(left, r...)
		return len(left) == 0, fmt.Errorf("left: %v", left)
	})
}
