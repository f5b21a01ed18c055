package e2e

import (
	"context"
	"fmt"
	"io"
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
	"github.com/lf-edge/evelet/tests/devnet"
)

// TestServices: two simulated devices run kube-proxy (`evelet agent
// --kube-proxy`, nftables mode, the node's own identity plus
// deploy/evelet-kube-proxy-rbac.yaml). From a pod on device 1: the
// apiserver through the `kubernetes` ClusterIP; a ClusterIP Service whose
// only endpoint is a pod on device 2; that pod by its IP (headless: the
// harness routes each device's pod range to the other device's address,
// host-gw style, on devnet's one link); ClientIP session affinity over
// endpoints on both devices (and, without it, both endpoints answer). From
// the host's network: a NodePort on device 1 whose endpoint is on device 2;
// with externalTrafficPolicy Local, device 2 answers and device 1 does not.
// Before the join the harness gives device 1 some of EVE's own state (an
// nftables firewall table, an iptables NAT rule, a bridge); after the device
// leaves, its namespace's nftables ruleset, iptables rules, links,
// addresses and routes are what they were before the join.
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
	applyYAML(t, ctx, dc, rbac)
	t.Cleanup(func() {
		cs.RbacV1().ClusterRoleBindings().Delete(context.Background(), "evelet:node-proxier", metav1.DeleteOptions{})
	})
	waitFor(t, 30*time.Second, "the binding to let nodes list what kube-proxy watches", func() (bool, error) {
		return mayList("discovery.k8s.io", "endpointslices") && mayList("networking.k8s.io", "servicecidrs") &&
			mayList("", "services") && mayList("", "nodes"), nil
	})

	opts := devnet.DeviceOptions{ControlPlane: env.cp, Evelet: env.evelet, Images: env.images, NoJoin: true,
		AgentArgs: []string{"--kube-proxy"}}
	d1 := env.devnet.NewDevice(t, 1, opts)
	d2 := env.devnet.NewDevice(t, 2, opts)
	devs := []*devnet.Device{d1, d2}
	for _, d := range devs {
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
	}
	// host-gw on devnet's one link: each device routes the other's pods
	// via the other's address.
	netnsRun(t, d1, "ip", "route", "add", d2.PodCIDR(), "via", d2.IP())
	netnsRun(t, d2, "ip", "route", "add", d1.PodCIDR(), "via", d1.IP())
	simulateEVENetwork(t, d1)
	before := netDump(t, d1)
	t.Logf("device 1 before the join (EVE's simulated state, host-gw route):\n%s\n%s", before["nft ruleset"], before["routes"])

	for _, d := range devs {
		if err := d.JoinCluster(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range devs {
		if _, err := d.WaitReady(ctx, 4*time.Minute); err != nil {
			t.Fatal(err)
		}
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
	clientPod := runningPod(t, client, 3*time.Minute)
	pod1 := runningPod(t, web1, 3*time.Minute)
	pod2 := runningPod(t, web2, 3*time.Minute)

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
	// Headless: no ClusterIP, the client reaches the endpoint by its IP.
	if headless.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Fatalf("headless Service got ClusterIP %s", headless.Spec.ClusterIP)
	}
	inPod("device 2's pod by its IP (headless)", get("http://"+pod2.Status.PodIP+":8080/"),
		func(s string) bool { return strings.TrimSpace(s) == pod2.Name })
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
	direct, viaSvc := timed("http://"+pod2.Status.PodIP+":8080/"), timed("http://"+remote.Spec.ClusterIP+"/")
	t.Logf("100 HTTP fetches from device 1's pod to device 2's pod: direct %v, through the ClusterIP %v, ratio %.3f",
		direct, viaSvc, float64(viaSvc)/float64(direct))

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

// defaultPodBridge is the bridge of the device's default pod network,
// which the runtime's CNI configuration (containerd's conflist in devnet)
// makes, not evelet: the CNI bridge plugin creates it at the first pod and
// never deletes it, so it outlives the node. It and its routes are left out
// of the comparison (docs/services.md says who must remove it).
const defaultPodBridge = "cni0"

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
			if !strings.Contains(name, "tables") && !strings.HasPrefix(name, "nft") && strings.Contains(l, defaultPodBridge) {
				continue // see defaultPodBridge
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
