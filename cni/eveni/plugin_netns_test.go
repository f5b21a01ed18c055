package eveni_test

// Plugin tests with the real eve-ni binary, called through libcni, on
// network instances made by tests/evesim as zedrouter makes them, with
// pods in throwaway network namespaces. Needs root (links, netns, iptables)
// and dnsmasq; every name starts with "h7t".

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/lf-edge/evelet/cni/eveni"
	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/tests/evesim"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/wait"
)

const (
	prefix   = "h7t"
	sysCNI   = "/usr/lib/cni"
	localSub = "10.97.1.0/24"
	extSub   = "192.168.97.0/24"
)

type env struct {
	t        testing.TB
	dir      string
	cni      *libcni.CNIConfig
	settings string
	net      *evesim.Network
	local    *evesim.NI
	sw       *evesim.NI
	dhcpSock string
}

func needRoot(t testing.TB) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates bridges, veths, network namespaces and NAT rules")
	}
	for _, p := range []string{"dnsmasq", "iptables", "ip", sysCNI + "/static", sysCNI + "/dhcp", "/bin/busybox"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is missing: run hack/install-prereqs.sh", p)
		}
	}
}

// testLock serialises the netns tests of concurrent runs of this package
// (fixed link names and subnets); the machine-wide heavy lock is not needed.
const testLock = "/tmp/evelet-eveni-netns-test.lock"

func newEnv(t testing.TB, grants []eveni.Grant) *env {
	needRoot(t)
	lf, err := os.OpenFile(testLock, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lf.Close() }) // registered first: runs after the NIs are gone
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	out, err := exec.Command("go", "build", "-o", filepath.Join(bin, "eve-ni"), "github.com/lf-edge/evelet/cmd/eve-ni").CombinedOutput()
	if err != nil {
		t.Fatalf("building eve-ni: %v: %s", err, out)
	}
	e := &env{t: t, dir: dir, cni: libcni.NewCNIConfigWithCacheDir([]string{bin, sysCNI}, filepath.Join(dir, "cache"), nil)}
	e.net = evesim.NewNetwork(pubsub.Root{Run: filepath.Join(dir, "run")}, prefix, filepath.Join(dir, "work"))
	t.Cleanup(func() {
		if err := e.net.Close(); err != nil {
			t.Errorf("closing the simulated NIs: %v", err)
		}
	})
	if e.local, err = e.net.AddLocalNI(evesim.LocalNIOptions{Name: "shop floor", BridgeNum: 1, Subnet: localSub, MTU: 1400}); err != nil {
		t.Fatal(err)
	}
	if e.sw, err = e.net.AddSwitchNI(evesim.SwitchNIOptions{Name: "ext", BridgeNum: 2, ExternalSubnet: extSub}); err != nil {
		t.Fatal(err)
	}
	if grants == nil {
		grants = []eveni.Grant{
			{NetworkInstance: "shop floor", ReservedStart: net.ParseIP("10.97.1.200"), ReservedEnd: net.ParseIP("10.97.1.202")},
			{NetworkInstance: e.sw.Status.UUID.String(), ReservedStart: net.ParseIP("192.168.97.30"), ReservedEnd: net.ParseIP("192.168.97.40")},
		}
	}
	e.settings = filepath.Join(dir, "eve-ni.json")
	e.dhcpSock = filepath.Join(dir, "dhcp.sock")
	b, _ := json.Marshal(eveni.Settings{EVERun: filepath.Join(dir, "run"), StateDir: filepath.Join(dir, "state"), Allowed: grants, DHCPSocket: e.dhcpSock})
	if err := os.WriteFile(e.settings, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

// pod is a throwaway network namespace.
func (e *env) pod(name string) string {
	e.t.Helper()
	name = prefix + name
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		e.t.Fatalf("netns %s: %v: %s", name, err, out)
	}
	e.t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return name
}

func (e *env) list(ni string, extra string) *libcni.NetworkConfigList {
	e.t.Helper()
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"eve-%s","plugins":[{"type":"eve-ni","networkInstance":%q,"eveniConfig":%q,
		"capabilities":{"mac":true,"ips":true}%s}]}`, strings.ReplaceAll(ni, " ", "-"), ni, e.settings, extra)
	l, err := libcni.ConfListFromBytes([]byte(conf))
	if err != nil {
		e.t.Fatal(err)
	}
	return l
}

func rt(netnsName, ifname string, caps map[string]any) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: "id-" + netnsName, NetNS: "/run/netns/" + netnsName, IfName: ifname, CapabilityArgs: caps}
}

func (e *env) add(l *libcni.NetworkConfigList, r *libcni.RuntimeConf) (*current.Result, error) {
	res, err := e.cni.AddNetworkList(context.Background(), l, r)
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

func (e *env) del(l *libcni.NetworkConfigList, r *libcni.RuntimeConf) {
	e.t.Helper()
	if err := e.cni.DelNetworkList(context.Background(), l, r); err != nil {
		e.t.Errorf("DEL %s: %v", r.IfName, err)
	}
}

// inPod runs a command in a pod's netns.
func inPod(netnsName string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", netnsName}, args...)...).CombinedOutput()
	return string(out), err
}

// ping waits until from reaches to: the first packets can go while the
// bridge port is still learning.
func ping(t *testing.T, netnsName, to string) {
	t.Helper()
	var last string
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		out, err := inPod(netnsName, "/bin/busybox", "ping", "-c1", "-W1", to)
		last = out
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("%s cannot reach %s: %s", netnsName, to, last)
	}
}

func hostVethGone(t *testing.T, r *libcni.RuntimeConf) {
	t.Helper()
	if _, err := netlink.LinkByName(eveni.HostVethName(r.ContainerID, r.IfName)); err == nil {
		t.Errorf("host veth of %s/%s left behind", r.ContainerID, r.IfName)
	}
}

func allocations(t *testing.T, e *env) string {
	b, err := os.ReadFile(filepath.Join(e.dir, "state", e.local.Status.UUID.String(), "allocations.json"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestLocalNITwoPods(t *testing.T) {
	e := newEnv(t, nil)
	l := e.list("shop floor", "")
	p1, p2 := e.pod("p1"), e.pod("p2")
	r1 := rt(p1, "net1", map[string]any{"mac": "02:97:00:00:00:01"})
	r2 := rt(p2, "net1", map[string]any{"ips": []string{"10.97.1.202/24"}})
	res1, err := e.add(l, r1)
	if err != nil {
		t.Fatal(err)
	}
	defer e.del(l, r1)
	res2, err := e.add(l, r2)
	if err != nil {
		t.Fatal(err)
	}
	defer e.del(l, r2)
	a1, a2 := res1.IPs[0].Address.IP, res2.IPs[0].Address.IP
	if a1.Equal(a2) || !a2.Equal(net.ParseIP("10.97.1.202")) {
		t.Fatalf("addresses %s and %s: want distinct, the second the requested 10.97.1.202", a1, a2)
	}
	for _, a := range []net.IP{a1, a2} {
		if v := a.To4()[3]; v < 200 || v > 202 {
			t.Errorf("%s is outside the reserved range (and must be outside DhcpRange .2-.99)", a)
		}
	}
	if res1.Interfaces[1].Mac != "02:97:00:00:00:01" {
		t.Errorf("pod MAC %s, want the requested 02:97:00:00:00:01", res1.Interfaces[1].Mac)
	}
	if len(res1.DNS.Nameservers) != 1 || res1.DNS.Nameservers[0] != "10.97.1.1" {
		t.Errorf("DNS %v: want the gateway (the NI lists no DNS servers)", res1.DNS.Nameservers)
	}
	if len(res1.Routes) != 0 {
		t.Errorf("routes %v: no default route unless the NAD asks", res1.Routes)
	}
	ping(t, p1, a2.String())
	ping(t, p2, "10.97.1.1")
	if out, _ := inPod(p1, "ip", "-o", "link", "show", "net1"); !strings.Contains(out, "mtu 1400") {
		t.Errorf("pod interface does not have the NI's MTU 1400: %s", out)
	}
	if err := e.cni.CheckNetworkList(context.Background(), l, r1); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := e.cni.GetStatusNetworkList(context.Background(), l); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	// A third pod takes the last free address; a fourth finds none.
	p3, p4 := e.pod("p3"), e.pod("p4")
	r3, r4 := rt(p3, "net1", nil), rt(p4, "net1", nil)
	if _, err := e.add(l, r3); err != nil {
		t.Fatal(err)
	}
	_, err = e.add(l, r4)
	if err == nil || !strings.Contains(err.Error(), "exhausted") {
		t.Fatalf("fourth pod in a range of three: %v, want exhausted", err)
	}
	if out, _ := inPod(p4, "ip", "link", "show", "net1"); !strings.Contains(out, "does not exist") {
		t.Errorf("refused ADD left net1 in the pod: %s", out)
	}
	e.del(l, r3)
	e.del(l, r2)
	hostVethGone(t, r2)
	hostVethGone(t, r3)
	if s := allocations(t, e); strings.Contains(s, r2.ContainerID) || strings.Contains(s, r3.ContainerID) {
		t.Errorf("DEL left allocations: %s", s)
	}
	// DEL again, and DEL after the netns is gone, are no errors.
	e.del(l, r2)
	_ = exec.Command("ip", "netns", "del", p3).Run()
	e.del(l, r3)
}

func TestLocalNIDefaultRouteAndGC(t *testing.T) {
	e := newEnv(t, nil)
	l := e.list("shop floor", `,"defaultRoute":true`)
	p := e.pod("gw")
	r := rt(p, "net1", nil)
	res, err := e.add(l, r)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Routes) != 1 || !res.Routes[0].GW.Equal(net.ParseIP("10.97.1.1")) {
		t.Fatalf("routes %v: want a default route via the gateway", res.Routes)
	}
	if out, _ := inPod(p, "ip", "route", "show", "default"); !strings.Contains(out, "via 10.97.1.1 dev net1") {
		t.Fatalf("pod routes: %s", out)
	}
	// GC with no valid attachments frees the address (libcni also DELs
	// the cached attachment).
	if err := e.cni.GCNetworkList(context.Background(), l, &libcni.GCArgs{}); err != nil {
		t.Fatal(err)
	}
	if s := allocations(t, e); strings.Contains(s, r.ContainerID) {
		t.Errorf("GC left the allocation: %s", s)
	}
	hostVethGone(t, r)
	if chains, err := eveni.GuardChains(); err != nil || slices.Contains(chains, eveni.HostVethName(r.ContainerID, r.IfName)) {
		t.Errorf("GC left the anti-spoofing rules: %v %v", chains, err)
	}
}

func TestSwitchNIDHCPFromExternalNetwork(t *testing.T) {
	e := newEnv(t, nil)
	l := e.list(e.sw.Status.UUID.String(), `,"ipam":{"type":"dhcp"}`)
	p := e.pod("sw")
	r := rt(p, "net1", nil)
	// Without the dhcp daemon: refused up front, nothing attached.
	if _, err := e.add(l, r); err == nil || !strings.Contains(err.Error(), "dhcp daemon") {
		t.Fatalf("dhcp without its daemon: %v", err)
	}
	hostVethGone(t, r)
	d := exec.Command(sysCNI+"/dhcp", "daemon", "-socketpath", e.dhcpSock)
	d.Stdout, d.Stderr = os.Stderr, os.Stderr
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Process.Kill(); _ = d.Wait() }()
	if err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		_, err := os.Stat(e.dhcpSock)
		return err == nil, nil
	}); err != nil {
		t.Fatal("dhcp daemon socket never appeared")
	}
	res, err := e.add(l, r)
	if err != nil {
		t.Fatal(err)
	}
	a := res.IPs[0].Address.IP.To4()
	if a == nil || a[2] != 97 || a[3] < 100 || a[3] > 150 {
		t.Fatalf("address %v: want one from the external DHCP server's 192.168.97.100-150", res.IPs[0].Address)
	}
	ping(t, p, e.sw.External.IP.String())
	e.del(l, r)
	hostVethGone(t, r)
}

func TestSwitchNIStaticIPs(t *testing.T) {
	e := newEnv(t, nil)
	l := e.list("ext", `,"ipam":{"type":"static"}`)
	p := e.pod("st")
	r := rt(p, "net1", map[string]any{"ips": []string{"192.168.97.33/24"}, "mac": "02:97:00:00:00:33"})
	// IPAM that would act outside the pod is refused before anything runs.
	for ipamConf, want := range map[string]string{
		`,"ipam":{"type":"host-local","dataDir":"persist/x","ranges":[[{"subnet":"192.168.97.0/24"}]]}`: `ipam "host-local" is not supported`,
		`,"ipam":{"type":"dhcp","daemonSocketPath":"/run/elsewhere.sock"}`:                              "daemonSocketPath is the node's to set",
	} {
		if _, err := e.add(e.list("ext", ipamConf), r); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", ipamConf, err, want)
		}
		hostVethGone(t, r)
	}
	res, err := e.add(l, r)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.IPs[0].Address.String(); got != "192.168.97.33/24" {
		t.Fatalf("address %s, want the requested 192.168.97.33/24", got)
	}
	ping(t, p, e.sw.External.IP.String())
	// GC keeps the valid attachment and copes with an IPAM plugin that
	// predates GC.
	if err := e.cni.GCNetworkList(context.Background(), l, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: r.ContainerID, IfName: r.IfName}}}); err != nil {
		t.Errorf("GC: %v", err)
	}
	if out, _ := inPod(p, "ip", "-o", "addr", "show", "net1"); !strings.Contains(out, "192.168.97.33/24") {
		t.Errorf("GC of a valid attachment changed it: %s", out)
	}
	e.del(l, r)
	hostVethGone(t, r)
}

func TestRefusals(t *testing.T) {
	e := newEnv(t, []eveni.Grant{{NetworkInstance: "shop floor", ReservedStart: net.ParseIP("10.97.1.50"), ReservedEnd: net.ParseIP("10.97.1.60")}})
	p := e.pod("ref")
	r := rt(p, "net1", nil)
	for _, c := range []struct {
		name string
		l    *libcni.NetworkConfigList
		want string
	}{
		{"absent", e.list("nowhere", ""), "does not exist on this device"},
		{"not given", e.list("ext", ""), "not given to Kubernetes by the device owner"},
		{"range overlaps DhcpRange", e.list("shop floor", ""), "overlaps its DhcpRange"},
	} {
		_, err := e.add(c.l, r)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
		if out, _ := inPod(p, "ip", "-o", "link"); strings.Contains(out, "net1") {
			t.Errorf("%s: refused ADD left net1: %s", c.name, out)
		}
		hostVethGone(t, r)
	}
	if err := e.local.SetActivated(false); err != nil {
		t.Fatal(err)
	}
	if _, err := e.add(e.list("shop floor", ""), r); err == nil || !strings.Contains(err.Error(), "not activated") {
		t.Errorf("deactivated NI: %v", err)
	}
}

// BenchmarkLocalNIAddDel times ADD and DEL of one pod interface on a Local
// NI through libcni (one plugin exec each), reported as medians: eve-ni,
// and for scale Debian's bridge plugin with host-local IPAM doing the same
// job on the same bridge.
func BenchmarkLocalNIAddDel(b *testing.B) {
	e := newEnv(b, nil)
	p := e.pod("bench")
	bridge, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"h7t-bridge","plugins":[{"type":"bridge","bridge":%q,
		"ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.97.1.0/24","rangeStart":"10.97.1.200","rangeEnd":"10.97.1.202"}]]}}]}`,
		e.local.Status.BridgeName, filepath.Join(e.dir, "host-local"))))
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		l    *libcni.NetworkConfigList
	}{{"eve-ni", e.list("shop floor", "")}, {"bridge+host-local", bridge}} {
		b.Run(c.name, func(b *testing.B) {
			var adds, dels []time.Duration
			for i := 0; i < b.N; i++ {
				r := rt(p, "net1", nil)
				r.ContainerID = fmt.Sprintf("bench-%d", i)
				t0 := time.Now()
				if _, err := e.add(c.l, r); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := e.cni.DelNetworkList(context.Background(), c.l, r); err != nil {
					b.Fatal(err)
				}
				adds, dels = append(adds, t1.Sub(t0)), append(dels, time.Since(t1))
			}
			med := func(d []time.Duration) float64 {
				slices.Sort(d)
				return float64(d[len(d)/2].Microseconds()) / 1000
			}
			b.ReportMetric(med(adds), "add-ms")
			b.ReportMetric(med(dels), "del-ms")
		})
	}
}

// TestLocalNIParallelAdds: plugin processes started at once for three pods
// on a range of three addresses give each pod its own.
func TestLocalNIParallelAdds(t *testing.T) {
	e := newEnv(t, nil)
	l := e.list("shop floor", "")
	type out struct {
		r   *libcni.RuntimeConf
		res *current.Result
		err error
	}
	ch := make(chan out, 3)
	for _, n := range []string{"q1", "q2", "q3"} {
		r := rt(e.pod(n), "net1", nil)
		go func() { res, err := e.add(l, r); ch <- out{r, res, err} }()
	}
	seen := map[string]bool{}
	for i := 0; i < 3; i++ {
		o := <-ch
		if o.err != nil {
			t.Fatalf("ADD %s: %v", o.r.ContainerID, o.err)
		}
		defer e.del(l, o.r)
		a := o.res.IPs[0].Address.IP.String()
		if seen[a] {
			t.Fatalf("two pods got %s", a)
		}
		seen[a] = true
	}
}

// GC of one network frees only its own NI's addresses: the runtime's
// valid attachments are that network's, so a pod on another NI (through
// another network) keeps its address.
func TestGCFreesOnlyItsNetwork(t *testing.T) {
	e := newEnv(t, nil)
	l := e.list("shop floor", "")
	p := e.pod("gcs")
	r := rt(p, "net1", nil)
	if _, err := e.add(l, r); err != nil {
		t.Fatal(err)
	}
	defer e.del(l, r)
	sw := e.list(e.sw.Status.UUID.String(), "")
	if err := e.cni.GCNetworkList(context.Background(), sw, &libcni.GCArgs{}); err != nil {
		t.Fatal(err)
	}
	if s := allocations(t, e); !strings.Contains(s, r.ContainerID) {
		t.Fatalf("GC of the Switch NI's network freed the Local NI pod's address: %s", s)
	}
	if err := e.cni.CheckNetworkList(context.Background(), l, r); err != nil {
		t.Fatalf("the Local NI pod after another network's GC: %v", err)
	}
}
