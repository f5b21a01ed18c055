package e2e

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/images/vmguest"
	"github.com/lf-edge/evelet/kubeproxy"
	"github.com/lf-edge/evelet/nodedns"
	"github.com/lf-edge/evelet/policy"
	"github.com/lf-edge/evelet/tests/devnet"
)

// podClusterCIDR is the test control plane's --cluster-cidr: node IPAM
// gives every Node a /24 of it (main_test.go).
const podClusterCIDR = "10.244.0.0/16"

// TestServices: two simulated devices on devnet's one link, each with
// evelet-cni as its pod network in evelet.pod-network=podcidr mode (the
// default network from the Node's podCIDR, which the control plane's node
// IPAM allocates) and host-gw routes between them made by the agents, run
// kube-proxy (nftables mode, the node's own identity plus
// deploy/evelet-kube-proxy-rbac.yaml; on by the --kube-proxy flag on
// device 1, by the owner's evelet.kube-proxy config item on device 2) and
// the node-local DNS.
// From a pod on device 1: kubernetes.default, a Service name and a
// headless Service name resolve through the node-local DNS; the apiserver
// through the `kubernetes` ClusterIP; a ClusterIP Service whose only
// endpoint is a pod on device 2; that pod by the address its headless
// Service name resolves to (pod to pod across devices, not masqueraded);
// ClientIP session affinity over endpoints on both devices (and, without
// it, both endpoints answer). A VM pod on device 1 (TCG) gets the
// node-local DNS as its guest's resolver. From the host's network: a NodePort on
// device 1 whose endpoint is on device 2; with externalTrafficPolicy
// Local, device 2 answers and device 1 does not. Before the join the
// harness gives device 1 some of EVE's own state (an nftables firewall
// table, an iptables NAT rule, a bridge); after the device leaves, its
// namespace's nftables ruleset, iptables rules, links, addresses and
// routes are what they were before the join, with nothing exempted. In
// between, with the apiserver stopped, the client pod still resolves the
// names it resolved.
func TestServices(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 20*time.Minute)
	cs := env.cp.Client()

	rbac, err := os.ReadFile(filepath.Join(env.root, "deploy", "evelet-kube-proxy-rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dc, err := dynamic.NewForConfig(env.cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	// What kube-proxy reads and a node's own identity may not: the reason
	// for the binding, checked against this apiserver's Node authorizer
	// and RBAC, before and after it is applied.
	mayList := func(group, resource string) bool {
		t.Helper()
		r, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User: "system:node:evdev-1", Groups: []string{"system:nodes", "system:authenticated"},
			ResourceAttributes: &authzv1.ResourceAttributes{Verb: "list", Group: group, Resource: resource},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return r.Status.Allowed
	}
	if mayList("discovery.k8s.io", "endpointslices") || mayList("networking.k8s.io", "servicecidrs") {
		t.Fatal("a node may already list EndpointSlices or ServiceCIDRs without deploy/evelet-kube-proxy-rbac.yaml (left from an earlier run?)")
	}
	// The node-local DNS's binding (checked and applied as TestNodeDNS
	// does) before kube-proxy's, which also grants EndpointSlices.
	nodeCredentialReadsWhatDNSNeeds(t, ctx)
	applyYAML(t, ctx, dc, rbac)
	t.Cleanup(func() {
		cs.RbacV1().ClusterRoleBindings().Delete(context.Background(), "evelet:node-proxier", metav1.DeleteOptions{})
	})
	waitFor(t, 30*time.Second, "the binding to let nodes list what kube-proxy watches", func() (bool, error) {
		return mayList("discovery.k8s.io", "endpointslices") && mayList("networking.k8s.io", "servicecidrs") &&
			mayList("", "services") && mayList("", "nodes"), nil
	})

	opts := devnet.DeviceOptions{ControlPlane: env.cp, Evelet: env.evelet, Images: env.images, NoJoin: true,
		// VM pods under TCG, as in TestVMPods.
		AgentArgs: []string{"--kube-proxy", "--vm-kvm-device=/nonexistent/kvm"}, EveletCNI: true,
		ConfigItems: map[string]string{
			"evelet.pod-network":              "podcidr",
			"evelet.pod-network.host-gw":      "true",
			"evelet.pod-network.cluster-cidr": podClusterCIDR,
			policy.KeyAllowVMEmulation:        "true",
		}}
	d1 := env.devnet.NewDevice(t, 1, opts)
	// Device 2's owner turns kube-proxy on with the config item instead
	// of the flag (its NodePort with externalTrafficPolicy Local must
	// answer below).
	opts2 := opts
	opts2.AgentArgs = []string{"--vm-kvm-device=/nonexistent/kvm"}
	opts2.ConfigItems = maps.Clone(opts.ConfigItems)
	opts2.ConfigItems[kubeproxy.ItemEnabled] = "true"
	d2 := env.devnet.NewDevice(t, 2, opts2)
	devs := []*devnet.Device{d1, d2}
	for _, d := range devs {
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
	}
	importVMImages(t, d1.Containerd())
	applyRuntimeClass(t, ctx)
	simulateEVENetwork(t, d1)
	before := netDump(t, d1)
	t.Logf("device 1 before the join (EVE's simulated state):\n%s\n%s", before["nft ruleset"], before["routes"])

	for _, d := range devs {
		if err := d.JoinCluster(ctx); err != nil {
			t.Fatal(err)
		}
	}
	podCIDR := map[*devnet.Device]*net.IPNet{}
	for _, d := range devs {
		n, err := d.WaitReady(ctx, 4*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, time.Minute, d.NodeName()+" gets a podCIDR from node IPAM", func() (bool, error) {
			n, err = cs.CoreV1().Nodes().Get(ctx, d.NodeName(), metav1.GetOptions{})
			return err == nil && n.Spec.PodCIDR != "", err
		})
		_, podCIDR[d], err = net.ParseCIDR(n.Spec.PodCIDR)
		if err != nil {
			t.Fatal(err)
		}
	}
	// host-gw, by the agents: each device routes the other's podCIDR via
	// the other's address on devnet's one link, with evelet's route
	// protocol.
	for _, p := range [][2]*devnet.Device{{d1, d2}, {d2, d1}} {
		want := podCIDR[p[1]].String() + " via " + p[1].IP() + " dev eth0"
		waitFor(t, time.Minute, p[0].NetNS()+"'s host-gw route "+want, func() (bool, error) {
			out, err := netnsOut(p[0], "ip", "route", "show", "proto", "0xe7")
			return err == nil && strings.Contains(out, want), fmt.Errorf("%v: %s", err, out)
		})
	}

	sfx := strconv.FormatInt(time.Now().UnixNano()%1_000_000, 36)
	client, web1, web2 := "svc-client-"+sfx, "svc-web1-"+sfx, "svc-web2-"+sfx
	const serve = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"
	for _, dep := range []struct{ name, node, cmd string }{
		{client, d1.NodeName(), "exec sleep 3600"},
		{web1, d1.NodeName(), serve},
		{web2, d2.NodeName(), serve},
	} {
		dp := busyboxDeployment(dep.name, dep.node, dep.cmd)
		dp.Spec.Template.Labels["tier"] = "web-" + sfx
		if dep.name == client {
			dp.Spec.Template.Labels["tier"] = "client-" + sfx
		}
		if _, err := cs.AppsV1().Deployments("default").Create(ctx, dp, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cs.AppsV1().Deployments("default").Delete(context.Background(), dep.name, metav1.DeleteOptions{})
		})
	}
	// A VM pod on device 1 (its guest boots under TCG while the
	// container pods are checked).
	vmName := "svc-vm-" + sfx
	if _, err := cs.CoreV1().Pods("default").Create(ctx, vmPod(vmName, vmguest.DiskRef, func(p *corev1.Pod) {
		p.Spec.NodeSelector = map[string]string{corev1.LabelHostname: d1.NodeName()}
	}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, context.Background(), cs, vmName) })
	clientPod := runningPod(t, client, 3*time.Minute)
	pod1 := runningPod(t, web1, 3*time.Minute)
	pod2 := runningPod(t, web2, 3*time.Minute)
	// eth0 of each pod is on its Node's podCIDR (evelet-podcidr), not on
	// the runtime's own cni0 network.
	for _, c := range []struct {
		p *corev1.Pod
		d *devnet.Device
	}{{clientPod, d1}, {pod1, d1}, {pod2, d2}} {
		if !podCIDR[c.d].Contains(net.ParseIP(c.p.Status.PodIP)) {
			t.Fatalf("pod %s has IP %s, outside %s's podCIDR %s", c.p.Name, c.p.Status.PodIP, c.d.NodeName(), podCIDR[c.d])
		}
	}

	svc := func(name string, sel map[string]string, mut func(*corev1.Service)) *corev1.Service {
		t.Helper()
		s := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name + "-" + sfx, Namespace: "default"},
			Spec: corev1.ServiceSpec{Selector: sel,
				Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}
		if mut != nil {
			mut(s)
		}
		s, err := cs.CoreV1().Services("default").Create(ctx, s, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cs.CoreV1().Services("default").Delete(context.Background(), s.Name, metav1.DeleteOptions{}) })
		return s
	}
	remote := svc("remote", map[string]string{"app": web2}, nil)
	headless := svc("headless", map[string]string{"app": web2}, func(s *corev1.Service) { s.Spec.ClusterIP = corev1.ClusterIPNone })
	both := svc("both", map[string]string{"tier": "web-" + sfx}, nil)
	sticky := svc("sticky", map[string]string{"tier": "web-" + sfx}, func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	})
	nodePort := svc("nodeport", map[string]string{"app": web2}, func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort })
	local := svc("local", map[string]string{"app": web2}, func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	})

	// kube-proxy on device 1 has its own tables in the device's namespace.
	waitFor(t, 2*time.Minute, "kube-proxy's nftables table on device 1", func() (bool, error) {
		out, err := netnsOut(d1, "nft", "list", "table", "ip", "kube-proxy")
		return err == nil && strings.Contains(out, remote.Spec.ClusterIP), fmt.Errorf("%v: %s", err, tail(out, 5))
	})

	// Debian's busybox wget crashes with -T; timeout bounds it instead.
	get := func(url string) string {
		return "timeout 5 wget -q -O - " + url
	}
	inPod := func(what, script string, ok func(string) bool) string {
		t.Helper()
		var out string
		waitFor(t, 2*time.Minute, what, func() (bool, error) {
			var err error
			out, err = env.cp.Kubectl(ctx, "exec", "-n", "default", clientPod.Name, "--", "sh", "-c", script)
			return err == nil && ok(out), fmt.Errorf("%v: %q", err, out)
		})
		return out
	}
	// The apiserver through the kubernetes Service (10.96.0.1:443 -> the
	// advertised address). busybox has no TLS client that works here, so
	// it speaks plain HTTP to the TLS port: Go's HTTPS server answers
	// that with a fixed 400 of its own.
	kube, err := cs.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	inPod("the apiserver through the kubernetes ClusterIP "+kube.Spec.ClusterIP, `printf 'GET /version HTTP/1.0\r\n\r\n' | nc -w 3 `+kube.Spec.ClusterIP+" 443",
		func(s string) bool { return strings.Contains(s, "Client sent an HTTP request to an HTTPS server") })
	inPod("a ClusterIP whose only endpoint is on device 2", get("http://"+remote.Spec.ClusterIP+"/"),
		func(s string) bool { return strings.TrimSpace(s) == pod2.Name })
	// Names through the node-local DNS the pod's resolv.conf names
	// (busybox's nslookup, fully qualified: it applies no search path).
	// A headless Service has no ClusterIP: its name resolves to the
	// endpoint's pod IP, which the client then reaches on device 2.
	if headless.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Fatalf("headless Service got ClusterIP %s", headless.Spec.ClusterIP)
	}
	fqdn := func(s *corev1.Service) string { return s.Name + ".default.svc.cluster.local" }
	resolved := map[string]string{
		"kubernetes.default.svc.cluster.local": kube.Spec.ClusterIP,
		fqdn(remote):                           remote.Spec.ClusterIP,
		fqdn(headless):                         pod2.Status.PodIP,
	}
	for name, ip := range resolved {
		inPod("the node-local DNS answers "+name, "nslookup "+name,
			func(s string) bool { return strings.Contains(s, "Address: "+ip) })
	}
	resolveAndGet := fmt.Sprintf(`ip=$(nslookup %s | sed -n 's/^Address: \(10\.[0-9.]*\)$/\1/p' | tail -n 1) && [ -n "$ip" ] && %s`,
		fqdn(headless), get("http://$ip:8080/"))
	inPod("device 2's pod by its headless Service name", resolveAndGet,
		func(s string) bool { return strings.TrimSpace(s) == pod2.Name })
	// Pod to pod across devices keeps the client's pod IP (cluster-cidr is
	// exempt from the masquerade): device 2's pod sees it as its peer.
	inPod("device 2's pod sees the client's pod IP", get("http://"+pod2.Status.PodIP+":8080/")+" >/dev/null; true",
		func(string) bool {
			out, err := env.cp.Kubectl(ctx, "exec", "-n", "default", pod2.Name, "--", "sh", "-c", "netstat -tn")
			return err == nil && strings.Contains(out, clientPod.Status.PodIP)
		})
	// Both endpoints answer a Service without affinity; with ClientIP
	// affinity one client gets one endpoint every time. (20 round-robin
	// picks all landing on one of two endpoints: odds 2^-19.)
	loop := func(url string, n int) string {
		return fmt.Sprintf("for i in $(seq %d); do %s; done", n, get(url))
	}
	inPod("both endpoints of a Service over devices 1 and 2", loop("http://"+both.Spec.ClusterIP+"/", 20),
		func(s string) bool { return strings.Contains(s, pod1.Name) && strings.Contains(s, pod2.Name) })
	out := inPod("a session-affine Service", loop("http://"+sticky.Spec.ClusterIP+"/", 20),
		func(s string) bool { return len(strings.Fields(s)) == 20 })
	if names := uniq(strings.Fields(out)); len(names) != 1 {
		t.Errorf("ClientIP affinity: one client reached %v", names)
	}

	// The VM pod: its guest's resolver is the node-local DNS (the pod's
	// DNS config, offered by DHCP). Not yet asserted: the guest resolving a
	// Service name and reaching its ClusterIP. In this test the guest
	// reached nothing beyond its own sandbox (no ARP answer from the pod
	// bridge's gateway; docs/services.md).
	waitFor(t, 6*time.Minute, "the VM pod's guest ready", func() (bool, error) {
		out, err := env.cp.Kubectl(ctx, "logs", "-n", "default", vmName)
		return strings.Contains(out, vmguest.ReadyLine), fmt.Errorf("%v: %s", err, tail(out, 3))
	})
	waitFor(t, 2*time.Minute, "the VM guest's resolv.conf names the node-local DNS", func() (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		out, err := env.cp.Kubectl(cctx, "exec", "-n", "default", vmName, "--", "/bin/cat", "/etc/resolv.conf")
		return err == nil && strings.Contains(out, "nameserver "+nodedns.DefaultAddress+"\n"), fmt.Errorf("%v: %q", err, out)
	})

	// NodePort from the host's network: device 1 forwards to device 2.
	hc := &http.Client{Timeout: 3 * time.Second}
	fetch := func(url string) (string, error) {
		resp, err := hc.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b)), err
	}
	np := nodePort.Spec.Ports[0].NodePort
	waitFor(t, 2*time.Minute, "NodePort on device 1 from the host", func() (bool, error) {
		s, err := fetch(fmt.Sprintf("http://%s:%d/", d1.IP(), np))
		return s == pod2.Name, fmt.Errorf("%v: %q", err, s)
	})
	lp := local.Spec.Ports[0].NodePort
	waitFor(t, 2*time.Minute, "externalTrafficPolicy Local NodePort on device 2 from the host", func() (bool, error) {
		s, err := fetch(fmt.Sprintf("http://%s:%d/", d2.IP(), lp))
		return s == pod2.Name, fmt.Errorf("%v: %q", err, s)
	})
	if s, err := fetch(fmt.Sprintf("http://%s:%d/", d1.IP(), lp)); err == nil {
		t.Errorf("externalTrafficPolicy Local NodePort on device 1 (no local endpoint) answered %q", s)
	}

	// Figures for docs/benchmarks.md: kube-proxy's RSS with these seven
	// Services, and 100 fetches from the pod through a ClusterIP vs to
	// the same endpoint's pod IP (each a busybox wget: process start
	// included, so the ratio understates the NAT's share).
	if pid := kubeProxyPID(d1); pid == 0 {
		t.Errorf("no kube-proxy process of device 1 found")
	} else {
		t.Logf("kube-proxy of device 1: pid %d, RSS %d KiB (settled)", pid, settledRSSKB(pid))
	}
	// /proc/uptime (10 ms steps) is the pod's only sub-second clock
	// (busybox's date has no %N); 100 fetches make the steps ~1 %.
	timed := func(url string) time.Duration {
		var d time.Duration
		inPod("100 timed fetches of "+url, fmt.Sprintf("cut -d' ' -f1 /proc/uptime; for i in $(seq 100); do wget -q -O /dev/null %s || exit 1; done; cut -d' ' -f1 /proc/uptime", url),
			func(s string) bool {
				f := strings.Fields(s)
				if len(f) != 2 {
					return false
				}
				a, err1 := strconv.ParseFloat(f[0], 64)
				b, err2 := strconv.ParseFloat(f[1], 64)
				d = time.Duration((b - a) * float64(time.Second))
				return err1 == nil && err2 == nil
			})
		return d
	}
	// A first round of each warms caches (page cache, ARP, conntrack
	// expectations) so that the order does not decide the ratio.
	directURL, svcURL := "http://"+pod2.Status.PodIP+":8080/", "http://"+remote.Spec.ClusterIP+"/"
	timed(directURL)
	timed(svcURL)
	direct, viaSvc := timed(directURL), timed(svcURL)
	t.Logf("100 HTTP fetches from device 1's pod to device 2's pod: direct %v, through the ClusterIP %v, ratio %.3f",
		direct, viaSvc, float64(viaSvc)/float64(direct))

	// The apiserver stopped: the names the client pod resolved still
	// resolve through the node-local DNS, past its cache's 30 s TTL (so
	// from the kubernetes plugin's informer store, or the cache serving
	// stale), asked from inside the pod's namespaces (kubectl exec needs
	// the apiserver).
	pid := criContainerPID(t, d1, containerID(clientPod))
	if err := env.cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	apiUp := false
	defer func() {
		if !apiUp {
			env.cp.StartAPIServer(context.Background())
		}
	}()
	stoppedAt := time.Now()
	for name, ip := range resolved {
		waitFor(t, 2*time.Minute, "the client pod resolves "+name+" with the apiserver stopped, after the cache TTL", func() (bool, error) {
			if time.Since(stoppedAt) < 35*time.Second {
				return false, fmt.Errorf("waiting out the cache TTL")
			}
			out, err := podLookup(pid, name)
			return strings.Contains(out, "Address: "+ip), fmt.Errorf("%v: %s", err, out)
		})
	}
	if err := env.cp.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	apiUp = true

	// Leave: the owner removes the cluster from device 1.
	if err := d1.EVE().RemoveCluster(); err != nil {
		t.Fatal(err)
	}
	if _, err := d1.WaitStatus(ctx, 3*time.Minute, "Left", func(s *agent.Status) bool { return s.Phase == agent.PhaseLeft }); err != nil {
		t.Fatal(err)
	}
	// The drain deleted device 1's pods; CNI DEL of the last one may still
	// run when the status says Left.
	var after map[string]string
	wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(context.Context) (bool, error) {
		after = netDump(t, d1)
		return dumpsEqual(before, after), nil
	})
	if !dumpsEqual(before, after) {
		for k := range before {
			if before[k] != after[k] {
				t.Errorf("%s differs after leave:\n--- before join\n%s--- after leave\n%s", k, before[k], after[k])
			}
		}
	}
}

// simulateEVENetwork gives a device's namespace some of what EVE's own
// networking holds before evelet joins: an nftables table, an iptables
// rule in the nat table and a bridge with an address.
func simulateEVENetwork(t *testing.T, d *devnet.Device) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", d.NetNS(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(`table inet eve-sim-fw {
	chain input { type filter hook input priority 10; policy accept; tcp dport 4822 drop; }
}
`)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v: %s", d.NetNS(), err, out)
	}
	netnsRun(t, d, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.1.0.0/24", "-o", "eth0", "-j", "MASQUERADE")
	netnsRun(t, d, "ip", "link", "add", "bn1", "type", "bridge")
	netnsRun(t, d, "ip", "addr", "add", "10.1.0.1/24", "dev", "bn1")
	netnsRun(t, d, "ip", "link", "set", "bn1", "up")
	// The bridge's IPv6 link-local address adds a local route once its
	// duplicate address detection ends: the dump is taken after that.
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		out, err := netnsOut(d, "ip", "-6", "addr", "show", "tentative")
		return err == nil && strings.TrimSpace(out) == "", nil
	})
	if err != nil {
		t.Fatalf("IPv6 DAD in %s did not end: %v", d.NetNS(), err)
	}
}

func netnsOut(d *devnet.Device, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", d.NetNS()}, args...)...).CombinedOutput()
	return string(out), err
}

func netnsRun(t *testing.T, d *devnet.Device, args ...string) string {
	t.Helper()
	out, err := netnsOut(d, args...)
	if err != nil {
		t.Fatalf("%s in %s: %v: %s", strings.Join(args, " "), d.NetNS(), err, out)
	}
	return out
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// netDump is what a device's namespace holds of networking: the nftables
// ruleset, iptables and ip6tables rules (counters dropped), links (no
// statistics), addresses and routes of every table.
func netDump(t *testing.T, d *devnet.Device) map[string]string {
	t.Helper()
	dump := map[string]string{}
	for name, args := range map[string][]string{
		"nft ruleset": {"nft", "list", "ruleset"},
		"iptables":    {"iptables-save"},
		"ip6tables":   {"ip6tables-save"},
		"links":       {"ip", "-o", "link", "show"},
		"addresses":   {"ip", "-o", "addr", "show"},
		"routes":      {"ip", "route", "show", "table", "all"},
		"routes6":     {"ip", "-6", "route", "show", "table", "all"},
	} {
		out := netnsRun(t, d, args...)
		var keep []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "#") {
				continue // iptables-save's time stamps
			}
			keep = append(keep, counters.ReplaceAllString(l, ""))
		}
		dump[name] = strings.Join(keep, "\n")
	}
	return dump
}

func dumpsEqual(a, b map[string]string) bool {
	for k := range a {
		if a[k] != b[k] {
			return false
		}
	}
	return len(a) == len(b)
}

func uniq(ss []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// kubeProxyPID finds the kube-proxy the device's agent runs (by its
// config file, which is under the device's run directory).
func kubeProxyPID(d *devnet.Device) int {
	want := "--config=" + filepath.Join(d.EveletRunDir(), "kube-proxy", "config.yaml")
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(b), "\x00")
		if len(args) > 2 && args[1] == "kube-proxy" && args[2] == want {
			return pid
		}
	}
	return 0
}
