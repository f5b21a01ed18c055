package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"

	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/nodedns"
	"github.com/lf-edge/evelet/tests/devnet"
)

// BenchmarkServices (issue 17): two devnet devices set up as in
// TestServices (podcidr pod network, host-gw, kube-proxy, node-local DNS
// with the test's resolver as EVE's), a client pod on device 1 and a web
// pod on device 2 behind a ClusterIP Service. Measured from inside the
// client pod's network namespace by the test process itself (Go's clock,
// no process start per sample), medians of samplesPerOp per op:
//   - TCP connect to the Service's ClusterIP vs to the pod IP directly,
//     and their ratio (kube-proxy's DNAT on device 1, host-gw to device 2);
//   - DNS A queries to the node-local DNS: one Service name again and again
//     (cached), a new outside name each time (uncached: forwarded to the
//     test's resolver, NXDOMAIN), and the same new names asked of that
//     resolver directly (the floor a forwarder adds to);
//   - RSS of device 1's kube-proxy and `evelet dns` at the end, and the
//     size of bin/evelet.
func BenchmarkServices(b *testing.B) {
	if env.skipWhy != "" {
		b.Skip(env.skipWhy)
	}
	ctx := testCtx(b, 15*time.Minute)
	cs := env.cp.Client()
	dc, err := dynamic.NewForConfig(env.cp.RESTConfig())
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range []string{"evelet-kube-proxy-rbac.yaml", "evelet-nodedns-rbac.yaml"} {
		doc, err := os.ReadFile(filepath.Join(env.root, "deploy", f))
		if err != nil {
			b.Fatal(err)
		}
		applyYAML(b, ctx, dc, doc)
	}
	b.Cleanup(func() {
		ctx := context.Background()
		cs.RbacV1().ClusterRoleBindings().Delete(ctx, "evelet:node-proxier", metav1.DeleteOptions{})
		cs.RbacV1().ClusterRoleBindings().Delete(ctx, "evelet-nodedns", metav1.DeleteOptions{})
		cs.RbacV1().ClusterRoles().Delete(ctx, "evelet-nodedns", metav1.DeleteOptions{})
	})
	hostIP := env.devnet.HostIP()
	testResolver(b, hostIP)
	opts := devnet.DeviceOptions{ControlPlane: env.cp, Evelet: env.evelet, Images: env.images,
		AgentArgs: []string{"--kube-proxy"}, EveletCNI: true, ConfigItems: map[string]string{
			"evelet.pod-network":              "podcidr",
			"evelet.pod-network.host-gw":      "true",
			"evelet.pod-network.cluster-cidr": podClusterCIDR,
		}}
	d1, d2 := env.devnet.NewDevice(b, 1, opts), env.devnet.NewDevice(b, 2, opts)
	for _, d := range []*devnet.Device{d1, d2} {
		st := pubsub.DeviceNetworkStatus{Ports: []pubsub.NetworkPortStatus{{IfName: "eth0", Logicallabel: "eth0", IsMgmt: true, Up: true, DNSServers: []net.IP{net.ParseIP(hostIP)}}}}
		if err := pubsub.Write(d.EVE().Root.DeviceNetworkStatus(), st); err != nil {
			b.Fatal(err)
		}
		if err := d.Start(); err != nil {
			b.Fatal(err)
		}
	}
	for _, d := range []*devnet.Device{d1, d2} {
		if _, err := d.WaitReady(ctx, 4*time.Minute); err != nil {
			b.Fatal(err)
		}
	}
	sfx := strconv.FormatInt(time.Now().UnixNano()%1_000_000, 36)
	client, web := "bsvc-client-"+sfx, "bsvc-web-"+sfx
	for _, dep := range []struct{ name, node, cmd string }{
		{client, d1.NodeName(), "exec sleep 3600"},
		{web, d2.NodeName(), "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"},
	} {
		if _, err := cs.AppsV1().Deployments("default").Create(ctx, busyboxDeployment(dep.name, dep.node, dep.cmd), metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			cs.AppsV1().Deployments("default").Delete(context.Background(), dep.name, metav1.DeleteOptions{})
		})
	}
	svc, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: web},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": web},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cs.CoreV1().Services("default").Delete(context.Background(), web, metav1.DeleteOptions{}) })
	clientPod := runningPod(b, client, 3*time.Minute)
	webPod := runningPod(b, web, 3*time.Minute)
	pid := criContainerPID(b, d1, containerID(clientPod))

	svcAddr := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	podAddr := net.JoinHostPort(webPod.Status.PodIP, "8080")
	localDNS := net.JoinHostPort(nodedns.DefaultAddress, "53")
	upstream := net.JoinHostPort(hostIP, "53")
	svcName := web + ".default.svc.cluster.local."
	// Ready: the Service translates and its name resolves.
	waitFor(b, 2*time.Minute, "the ClusterIP and the Service name from the client pod", func() (bool, error) {
		err := inPodNetNS(pid, func() error {
			if _, err := connectOnce(svcAddr); err != nil {
				return err
			}
			_, err := queryOnce(localDNS, svcName, dns.RcodeSuccess)
			return err
		})
		return err == nil, err
	})

	var direct, viaSvc, cached, uncached, upstreamDirect []time.Duration
	n := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		err := inPodNetNS(pid, func() error {
			for j := 0; j < samplesPerOp; j++ {
				// Interleaved, so load from other work hits both alike.
				for _, c := range []struct {
					addr string
					into *[]time.Duration
				}{{podAddr, &direct}, {svcAddr, &viaSvc}} {
					d, err := connectOnce(c.addr)
					if err != nil {
						return err
					}
					*c.into = append(*c.into, d)
				}
				d, err := queryOnce(localDNS, svcName, dns.RcodeSuccess)
				if err != nil {
					return err
				}
				cached = append(cached, d)
				n++
				fresh := fmt.Sprintf("b%d-%s.%s", n, sfx, outsideName)
				if d, err = queryOnce(localDNS, fresh, dns.RcodeNameError); err != nil {
					return err
				}
				uncached = append(uncached, d)
				if d, err = queryOnce(upstream, "direct-"+fresh, dns.RcodeNameError); err != nil {
					return err
				}
				upstreamDirect = append(upstreamDirect, d)
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	us := func(d []time.Duration) float64 { return float64(median(d).Microseconds()) }
	b.ReportMetric(us(direct), "connect-pod-us")
	b.ReportMetric(us(viaSvc), "connect-svc-us")
	b.ReportMetric(float64(median(viaSvc))/float64(median(direct)), "svc/pod")
	b.ReportMetric(us(cached), "dns-cached-us")
	b.ReportMetric(us(uncached), "dns-uncached-us")
	b.ReportMetric(us(upstreamDirect), "dns-upstream-direct-us")
	if p := kubeProxyPID(d1); p != 0 {
		b.ReportMetric(float64(settledRSSKB(p))/1024, "kube-proxy-RSS-MiB")
	} else {
		b.Error("no kube-proxy process of device 1 found")
	}
	if p, err := dnsPID(d1); err == nil {
		b.ReportMetric(float64(settledRSSKB(p))/1024, "dns-RSS-MiB")
	} else {
		b.Error(err)
	}
	if st, err := os.Stat(env.evelet); err == nil {
		b.ReportMetric(float64(st.Size())/(1<<20), "binary-MiB")
	}
}

// samplesPerOp is how many of each measurement one benchmark op takes.
const samplesPerOp = 50

// inPodNetNS runs f on an OS thread in pid's network namespace. The thread
// is never given back to the scheduler (the goroutine ends locked, so the
// runtime retires it): no other goroutine ever runs in the pod's netns.
func inPodNetNS(pid int, f func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.GetFromPid(pid)
		if err != nil {
			done <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			done <- err
			return
		}
		done <- f()
	}()
	return <-done
}

// connectOnce times one TCP handshake to addr.
func connectOnce(addr string) (time.Duration, error) {
	t0 := time.Now()
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	d := time.Since(t0)
	if err != nil {
		return 0, err
	}
	c.Close()
	return d, nil
}

// queryOnce times one A query over UDP and checks its rcode.
func queryOnce(server, name string, rcode int) (time.Duration, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	c := &dns.Client{Timeout: 3 * time.Second}
	r, d, err := c.Exchange(m, server)
	if err != nil {
		return 0, fmt.Errorf("%s from %s: %w", name, server, err)
	}
	if r.Rcode != rcode {
		return 0, fmt.Errorf("%s from %s: rcode %s, want %s", name, server, dns.RcodeToString[r.Rcode], dns.RcodeToString[rcode])
	}
	return d, nil
}
