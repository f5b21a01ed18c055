package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ktypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/vishvananda/netlink"

	"github.com/lf-edge/evelet/cni/annotation"
	"github.com/lf-edge/evelet/cni/eveni"
	"github.com/lf-edge/evelet/cni/meta"
	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/internal/layout"
	"github.com/lf-edge/evelet/policy"
	"github.com/lf-edge/evelet/tests/evesim"
)

// TestNetworkCredentialCannotRunCode: the evelet-network token a device
// holds (deploy/evelet-network-rbac.yaml, against the real apiserver)
// cannot change a pod's image, which would run code of the holder's
// choosing, while evelet-cni's own write of network-status (through
// pods/status, as multus does) works with it.
func TestNetworkCredentialCannotRunCode(t *testing.T) {
	needEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dc, err := dynamic.NewForConfig(env.cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	token := setupNADCluster(t, ctx, dc)
	cs := env.cp.Client()

	// A pod bound to a node that does not exist: it never runs, so only
	// the API object matters.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "netcred-victim", Namespace: "default"},
		Spec: corev1.PodSpec{NodeName: "netcred-nowhere", Containers: []corev1.Container{{
			Name: "main", Image: images.BusyboxRef, ImagePullPolicy: corev1.PullNever, Command: []string{"sleep", "3600"}}}},
	}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Pods("default").Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	})

	// The token's client, and the kubeconfig evelet-cni reads, as the
	// agent writes it.
	kubeconfig := filepath.Join(t.TempDir(), "evelet-network.kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: env.cp.URL(), CertificateAuthorityData: env.cp.CACertPEM()}
	kc.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	kc.CurrentContext = "c"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	cfg := &rest.Config{Host: env.cp.URL(), BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: env.cp.CACertPEM()}}
	tokenCS, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	// The attack: change the image (merge and JSON patch alike).
	for _, p := range []struct {
		typ  ktypes.PatchType
		body string
	}{
		{ktypes.StrategicMergePatchType, `{"spec":{"containers":[{"name":"main","image":"attacker.example/evil:1"}]}}`},
		{ktypes.JSONPatchType, `[{"op":"replace","path":"/spec/containers/0/image","value":"attacker.example/evil:1"}]`},
	} {
		_, err := tokenCS.CoreV1().Pods("default").Patch(ctx, pod.Name, p.typ, []byte(p.body), metav1.PatchOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("the evelet-network token's %s PATCH of spec.containers[0].image: %v, want Forbidden", p.typ, err)
		}
	}
	// Nor through the status subresource, which keeps the spec.
	if _, err := tokenCS.CoreV1().Pods("default").Patch(ctx, pod.Name, ktypes.MergePatchType,
		[]byte(`{"spec":{"containers":[{"name":"main","image":"attacker.example/evil:1"}]}}`), metav1.PatchOptions{}, "status"); err != nil {
		t.Logf("status PATCH with a spec: %v", err)
	}
	got, err := cs.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img := got.Spec.Containers[0].Image; img != images.BusyboxRef {
		t.Fatalf("the pod's image is now %q", img)
	}

	// evelet-cni's own write works with the token.
	c := &meta.Conf{Kubeconfig: kubeconfig}
	cl, err := meta.KubeClients(c)
	if err != nil {
		t.Fatal(err)
	}
	status := `[{"name":"default/x","interface":"net1","ips":["10.9.0.2"]}]`
	if err := cl.Pods.Annotate(ctx, "default", pod.Name, annotation.StatusKey, status); err != nil {
		t.Fatalf("evelet-cni writing network-status with the token: %v", err)
	}
	got, err = cs.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	_ = json.Unmarshal([]byte(got.Annotations[annotation.StatusKey]), &a)
	_ = json.Unmarshal([]byte(status), &b)
	if got.Annotations[annotation.StatusKey] == "" || !jsonEqual(a, b) || got.Spec.Containers[0].Image != images.BusyboxRef {
		t.Fatalf("after evelet-cni's write: annotations %v, image %q", got.Annotations, got.Spec.Containers[0].Image)
	}
	_ = os.Remove(kubeconfig)
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// TestNADAttacks: through the real kubelet, containerd and evelet-cni on a
// simulated EVE device, each way a tenant's NAD or pod annotation tried to
// reach what belongs to the device owner is refused by a named rule in the
// pod's events, and the host is unchanged afterwards: no port on the NI
// bridge, the same bridge FDB, no anti-spoofing chain, no attachment
// record or address left, no file at the path the tenant named.
func TestNADAttacks(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 20*time.Minute)
	cs := env.cp.Client()
	dc, err := dynamic.NewForConfig(env.cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	n := newNADEVEDevice(t, ctx, dc, "Edge NAD Attacks", "edge-nad-attacks", "h8")
	ni, err := n.nw.AddLocalNI(evesim.LocalNIOptions{Name: "atk-local", UUID: "6b2a7c1e-5d3f-4c2a-8e1b-000000000062",
		BridgeNum: 62, Subnet: "10.98.62.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	// An EVE app on the NI: its MAC EVE has learned, and one only configured.
	learnedMAC, configuredMAC := "02:a0:00:00:62:01", net.HardwareAddr{0x02, 0xa0, 0, 0, 0x62, 0x02}
	ni.Status.IPAssignments = map[string]pubsub.AssignedAddrs{learnedMAC: {}}
	if err := ni.Publish(); err != nil {
		t.Fatal(err)
	}
	appDir := filepath.Join(n.sim.Root.Run, "zedmanager", "AppNetworkConfig")
	if err := os.MkdirAll(appDir, 0o755); err != nil {
		t.Fatal(err)
	}
	app, _ := json.Marshal(map[string]any{"DisplayName": "plc", "AppNetAdapterList": []map[string]any{{"Name": "eth0",
		"AppMacAddr": base64.StdEncoding.EncodeToString(configuredMAC), "AppIPAddr": "10.98.62.200", "Network": ni.Status.UUID.String()}}})
	if err := os.WriteFile(filepath.Join(appDir, "99999999-9999-4999-8999-999999999962.json"), app, 0o644); err != nil {
		t.Fatal(err)
	}
	tenantFile := filepath.Join(t.TempDir(), "tenant-eve-ni.json")
	rel, _ := filepath.Rel("/", tenantFile)
	createNAD(t, ctx, dc, "atk-local", `{"cniVersion":"1.1.0","name":"atk-local","type":"eve-ni","networkInstance":"atk-local","capabilities":{"mac":true,"ips":true}}`)
	createNAD(t, ctx, dc, "atk-evenicfg", `{"cniVersion":"1.1.0","name":"atk-evenicfg","type":"eve-ni","networkInstance":"atk-local","eveniconfig":"../../../../../../`+rel+`"}`)
	createNAD(t, ctx, dc, "atk-sock", `{"cniVersion":"1.1.0","name":"atk-sock","type":"eve-ni","networkInstance":"atk-local","ipam":{"type":"static","daemonsocketpath":"../../run/containerd/containerd.sock"}}`)
	createNAD(t, ctx, dc, "atk-rtconf", `{"cniVersion":"1.1.0","name":"atk-rtconf","type":"eve-ni","networkInstance":"atk-local","RuntimeConfig":{"mac":"`+learnedMAC+`"}}`)
	n.join(t, "11111111-2222-4333-8444-777777777777", map[string]string{policy.KeyNetworkInstances: "atk-local=10.98.62.200-10.98.62.210"})
	node := n.node
	st := layout.State{Dir: n.d.stateDir()}
	br, err := netlink.LinkByName(ni.Status.BridgeName)
	if err != nil {
		t.Fatal(err)
	}

	hostState := func() string {
		var b strings.Builder
		fmt.Fprintf(&b, "ports %v\n", bridgePorts(t, ni.Status.BridgeName))
		out, _ := exec.Command("bridge", "fdb", "show", "br", ni.Status.BridgeName).CombinedOutput()
		fdb := strings.Split(strings.TrimSpace(string(out)), "\n")
		sort.Strings(fdb)
		fmt.Fprintf(&b, "fdb %v\n", fdb)
		chains, err := eveni.GuardChains()
		fmt.Fprintf(&b, "guard chains %v %v\n", chains, err)
		recs, _ := filepath.Glob(filepath.Join(st.CNI().MetaState(), "attachments", "*.json"))
		fmt.Fprintf(&b, "records %v\n", recs)
		alloc, _ := os.ReadFile(filepath.Join(st.EveNI(), ni.Status.UUID.String(), "allocations.json"))
		var a struct {
			IPs  map[string]any `json:"ips"`
			MACs map[string]any `json:"macs"`
		}
		_ = json.Unmarshal(alloc, &a)
		fmt.Fprintf(&b, "allocations %d %d\n", len(a.IPs), len(a.MACs))
		_, err = os.Stat(tenantFile)
		fmt.Fprintf(&b, "tenant file exists: %v\n", err == nil)
		return b.String()
	}
	before := hostState()

	for _, c := range []struct{ pod, networks, want string }{
		// Keys compared as Go decodes them, and relative paths.
		{"atk-keycase", "atk-evenicfg", `"eveniConfig" is the node's to set`},
		{"atk-relsock", "atk-sock", `names a host path`},
		{"atk-rtconf", "atk-rtconf", `"runtimeConfig" is the runtime's to set`},
		// cni-args must not undo a refusal.
		{"atk-cniargs", `[{"name":"atk-local","cni-args":{"ips":["10.98.62.1/24"]}}]`, `cni-args "ips"`},
		{"atk-sysctl", `[{"name":"atk-local","cni-args":{"sysctl":{"net.ipv4.ip_forward":"1"}}}]`, `cni-args "sysctl"`},
		// A request the bandwidth plugin would refuse at every DEL.
		{"atk-bw", `[{"name":"atk-local","bandwidth":{"ingressRate":1000000,"egressRate":1000000}}]`, "ingressRate needs ingressBurst"},
		// The identity the anti-spoofing guard enforces.
		{"atk-appmac", `[{"name":"atk-local","mac":"` + configuredMAC.String() + `"}]`, `is EVE app interface "eth0"'s`},
		{"atk-learnedmac", `[{"name":"atk-local","mac":"` + learnedMAC + `"}]`, "is an EVE app's"},
		{"atk-brmac", `[{"name":"atk-local","mac":"` + br.Attrs().HardwareAddr.String() + `"}]`, "is the NI bridge's"},
		{"atk-appip", `[{"name":"atk-local","ips":["10.98.62.200/24"]}]`, "used by EVE"},
		{"atk-gwip", `[{"name":"atk-local","ips":["10.98.62.1/24"]}]`, "outside the range"},
	} {
		p := nadPod(c.pod, node, c.networks, "sleep 3600")
		if _, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitSandboxEvent(t, ctx, c.pod, c.want)
		deletePod(t, ctx, cs, c.pod)
	}
	waitFor(t, time.Minute, "the host as before the attacks", func() (bool, error) {
		now := hostState()
		return now == before, fmt.Errorf("before:\n%s\nnow:\n%s", before, now)
	})
}
