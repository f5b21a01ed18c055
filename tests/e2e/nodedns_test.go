package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/nodedns"
	"github.com/lf-edge/evelet/tests/devnet"
	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
)

// outsideName is answered only by the test's resolver on the host, which
// the device's EVE names as its DNS server.
const outsideName, outsideIP = "outside.evelet-test.example.", "192.0.2.53"

// TestNodeDNS: a pod on a devnet device resolves the cluster's names
// (kubernetes.default, a Service) through the node-local DNS at
// 169.254.20.10, which its resolv.conf names, and an outside name through
// the resolver EVE's DeviceNetworkStatus gives the device; with the
// device's link to the control plane and that resolver cut, the names it
// resolved still resolve; after leave the DNS interface is gone.
func TestNodeDNS(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 15*time.Minute)
	cs := env.cp.Client()
	nodeCredentialReadsWhatDNSNeeds(t, ctx)

	hostIP := env.devnet.HostIP()
	stopResolver := testResolver(t, hostIP)
	d := env.devnet.NewDevice(t, 1, devnet.DeviceOptions{ControlPlane: env.cp, Evelet: env.evelet, Images: env.images})
	dns := pubsub.DeviceNetworkStatus{Ports: []pubsub.NetworkPortStatus{{IfName: "eth0", Logicallabel: "eth0", IsMgmt: true, Up: true, DNSServers: []net.IP{net.ParseIP(hostIP)}}}}
	if err := pubsub.Write(d.EVE().Root.DeviceNetworkStatus(), dns); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WaitReady(ctx, 4*time.Minute); err != nil {
		t.Fatal(err)
	}

	sfx := strconv.FormatInt(time.Now().UnixNano()%1_000_000, 36)
	app := "nd-" + sfx
	t.Cleanup(func() {
		cs.AppsV1().Deployments("default").Delete(context.Background(), app, metav1.DeleteOptions{})
		cs.CoreV1().Services("default").Delete(context.Background(), app, metav1.DeleteOptions{})
	})
	svc, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: app},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": app},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kube, err := cs.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, busyboxDeployment(app, d.NodeName(), "exec sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := runningPod(t, app, 3*time.Minute)
	pid := criContainerPID(t, d, containerID(pod))

	resolv, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/etc/resolv.conf", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(resolv), "nameserver "+nodedns.DefaultAddress+"\n") || !strings.Contains(string(resolv), "search default.svc.cluster.local svc.cluster.local cluster.local") {
		t.Fatalf("pod's resolv.conf does not name the node-local DNS and the cluster's search path:\n%s", resolv)
	}
	want := map[string]string{
		"kubernetes.default.svc.cluster.local": kube.Spec.ClusterIP,
		app + ".default.svc.cluster.local":     svc.Spec.ClusterIP,
		strings.TrimSuffix(outsideName, "."):   outsideIP,
	}
	for name, ip := range want {
		waitFor(t, 2*time.Minute, "pod resolves "+name, func() (bool, error) {
			out, err := podLookup(pid, name)
			return strings.Contains(out, "Address: "+ip), fmt.Errorf("%v: %s", err, out)
		})
	}
	// busybox's nslookup does not apply the search path: the names asked
	// are the ones the pod's search path makes of "kubernetes.default".
	t.Logf("resolved %v through %s; evelet dns: %s", want, nodedns.DefaultAddress, dnsProcMemory(d))

	// Cut the device off: its veth on the host bridge goes down (docs:
	// "host veth evdev<n>h"), and the outside resolver stops.
	veth, err := netlink.LinkByName("evdev1h")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetDown(veth); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			netlink.LinkSetUp(veth)
		}
	}
	t.Cleanup(restore)
	stopResolver()
	if out, err := exec.Command("ip", "netns", "exec", d.NetNS(), "busybox", "nc", "-w", "2", hostIP, "6443").CombinedOutput(); err == nil {
		t.Fatalf("device still reaches the apiserver after the cut: %s", out)
	}
	// Past the cache's 30 s TTL, so the kubernetes plugin answers from
	// its informers (or the cache serves stale), not a fresh entry.
	cutAt := time.Now()
	for name, ip := range want {
		waitFor(t, 2*time.Minute, "pod resolves "+name+" while cut off, after the cache TTL", func() (bool, error) {
			if time.Since(cutAt) < 35*time.Second {
				return false, fmt.Errorf("waiting out the cache TTL")
			}
			out, err := podLookup(pid, name)
			return strings.Contains(out, "Address: "+ip), fmt.Errorf("%v: %s", err, out)
		})
	}
	restore()

	// Leave: the interface goes with the node's credentials.
	if err := d.EVE().RemoveCluster(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WaitStatus(ctx, 3*time.Minute, "Left", func(s *agent.Status) bool { return s.Phase == agent.PhaseLeft }); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "-n", d.NetNS(), "link", "show", nodedns.DefaultLinkName).CombinedOutput(); err == nil {
		t.Fatalf("%s still in %s after leave: %s", nodedns.DefaultLinkName, d.NetNS(), out)
	}
	if err := d.Close(); err != nil {
		t.Error(err)
	}
	if left := d.Leftovers(); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// dnsProcMemory reports the RSS and anonymous memory of the device's
// `evelet dns`.
func dnsProcMemory(d *devnet.Device) string {
	pid, err := dnsPID(d)
	if err != nil {
		return err.Error()
	}
	roll, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	var out []string
	for _, line := range strings.Split(string(roll), "\n") {
		if strings.HasPrefix(line, "Rss:") || strings.HasPrefix(line, "Anonymous:") {
			out = append(out, strings.Join(strings.Fields(line), " "))
		}
	}
	return strings.Join(out, ", ")
}

// dnsPID finds the device's `evelet dns` by its command line and the
// device's netns.
func dnsPID(d *devnet.Device) (int, error) {
	st, err := os.Stat(filepath.Join("/run/netns", d.NetNS()))
	if err != nil {
		return 0, err
	}
	ns := fmt.Sprintf("net:[%d]", st.Sys().(*syscall.Stat_t).Ino)
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range dirs {
		cmd, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		if !strings.Contains(string(cmd), "\x00dns\x00") {
			continue
		}
		if l, _ := os.Readlink(filepath.Join(dir, "ns", "net")); l != ns {
			continue
		}
		return strconv.Atoi(filepath.Base(dir))
	}
	return 0, fmt.Errorf("no evelet dns process in %s", d.NetNS())
}

// podLookup runs busybox's nslookup inside the pod's mount and network
// namespaces: the pod's own resolv.conf, its own route to the server, and
// no apiserver on the way (kubectl exec would need one).
func podLookup(pid int, name string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(pid), "-m", "-n", "--", "/bin/busybox", "nslookup", name).CombinedOutput()
	return string(out), err
}

// testResolver answers outsideName on hostIP:53 (UDP and TCP), standing in
// for the resolver EVE's uplink gives the device.
func testResolver(t testing.TB, hostIP string) (stop func()) {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if q := r.Question[0]; strings.EqualFold(q.Name, outsideName) && q.Qtype == dns.TypeA {
			rr, _ := dns.NewRR(outsideName + " 60 IN A " + outsideIP)
			m.Answer = append(m.Answer, rr)
		} else if !strings.EqualFold(q.Name, outsideName) {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	addr := net.JoinHostPort(hostIP, "53")
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("test resolver: %v", err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		t.Fatalf("test resolver: %v", err)
	}
	udp, tcp := &dns.Server{PacketConn: pc, Handler: h}, &dns.Server{Listener: l, Handler: h}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			udp.Shutdown()
			tcp.Shutdown()
		}
	}
	t.Cleanup(stop)
	return stop
}

// nodeCredentialReadsWhatDNSNeeds: the Node authorizer alone does not let
// a node list EndpointSlices or Namespaces (checked with the binding
// removed), and deploy/evelet-nodedns-rbac.yaml does, for list and watch.
func nodeCredentialReadsWhatDNSNeeds(t *testing.T, ctx context.Context) {
	t.Helper()
	cs := env.cp.Client()
	cs.RbacV1().ClusterRoleBindings().Delete(ctx, "evelet-nodedns", metav1.DeleteOptions{})
	can := func(group, resource, verb string) bool {
		r, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User: "system:node:nd-probe", Groups: []string{"system:nodes", "system:authenticated"},
			ResourceAttributes: &authzv1.ResourceAttributes{Group: group, Resource: resource, Verb: verb},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return r.Status.Allowed
	}
	type res struct{ group, resource string }
	needs := []res{{"", "services"}, {"discovery.k8s.io", "endpointslices"}, {"", "namespaces"}}
	waitFor(t, time.Minute, "binding removed", func() (bool, error) {
		return !can("discovery.k8s.io", "endpointslices", "list"), fmt.Errorf("still allowed")
	})
	if can("", "namespaces", "list") {
		t.Errorf("a node may list namespaces without evelet-nodedns: the binding is not needed for them")
	}
	rbac, err := os.ReadFile(filepath.Join(env.root, "deploy", "evelet-nodedns-rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dc, err := dynamic.NewForConfig(env.cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	applyYAML(t, ctx, dc, rbac)
	// Other tests share the cluster and check what a node may read without
	// their own binding (TestServices): this one goes with the test.
	t.Cleanup(func() {
		cs.RbacV1().ClusterRoleBindings().Delete(context.Background(), "evelet-nodedns", metav1.DeleteOptions{})
		cs.RbacV1().ClusterRoles().Delete(context.Background(), "evelet-nodedns", metav1.DeleteOptions{})
	})
	for _, r := range needs {
		for _, verb := range []string{"list", "watch"} {
			waitFor(t, time.Minute, "node may "+verb+" "+r.resource, func() (bool, error) {
				return can(r.group, r.resource, verb), fmt.Errorf("denied")
			})
		}
	}
	for _, r := range []res{{"", "secrets"}} {
		if can(r.group, r.resource, "list") {
			t.Errorf("a node may list %s cluster-wide", r.resource)
		}
	}
}
