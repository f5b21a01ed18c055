package vmnet

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/wait"
)

const cniBinDir = "/usr/lib/cni"

// startNetns is the network namespace the test process started in.
var startNetns, _ = os.Readlink("/proc/self/ns/net")

// env is one throwaway pod network: a host bridge h5br<rand>, a conflist
// (bridge + host-local + portmap) in a temp dir, and a Network over it.
type env struct {
	t        testing.TB
	dir      string
	bridge   string
	subnet   netip.Prefix
	ipamDir  string
	cacheDir string
	net      *Network
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("vmnet needs root to create network namespaces, bridges and taps")
	}
	if _, err := os.Stat(filepath.Join(cniBinDir, "bridge")); err != nil {
		t.Skip("CNI plugins are not installed in /usr/lib/cni (hack/install-prereqs.sh installs them)")
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func newEnv(t testing.TB, subnet string) *env {
	needRoot(t)
	e := &env{t: t, dir: t.TempDir(), bridge: "h5br" + randHex(3), subnet: netip.MustParsePrefix(subnet)}
	e.ipamDir = filepath.Join(e.dir, "ipam")
	e.cacheDir = filepath.Join(e.dir, "cache")
	conf := filepath.Join(e.dir, "net.d")
	if err := os.MkdirAll(conf, 0o755); err != nil {
		t.Fatal(err)
	}
	type obj = map[string]any
	cl := obj{
		"cniVersion": "1.0.0",
		"name":       "h5-vmnet-test",
		"plugins": []obj{
			{
				"type":      "bridge",
				"bridge":    e.bridge,
				"isGateway": true,
				"ipMasq":    false,
				"ipam": obj{
					"type":    "host-local",
					"ranges":  [][]obj{{{"subnet": subnet}}},
					"routes":  []obj{{"dst": "0.0.0.0/0"}},
					"dataDir": e.ipamDir,
				},
			},
			{"type": "portmap", "capabilities": obj{"portMappings": true}},
		},
	}
	b, _ := json.Marshal(cl)
	if err := os.WriteFile(filepath.Join(conf, "10-h5.conflist"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.DebugLevel)
	n, err := New(Config{
		CNIConfDir: conf,
		CNIBinDirs: []string{cniBinDir},
		NetnsDir:   filepath.Join(e.dir, "netns"),
		CacheDir:   e.cacheDir,
		Log:        logrus.NewEntry(log),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.net = n
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(e.bridge); err == nil {
			netlink.LinkDel(l)
		}
	})
	return e
}

// ipamEntries lists the addresses host-local still holds.
func (e *env) ipamEntries() []string {
	var out []string
	ents, _ := os.ReadDir(filepath.Join(e.ipamDir, "h5-vmnet-test"))
	for _, d := range ents {
		if _, err := netip.ParseAddr(d.Name()); err == nil {
			out = append(out, d.Name())
		}
	}
	return out
}

// assertClean checks nothing of sandbox id is left: namespace, record,
// IPAM entry, libcni cache entry, host veth on the bridge.
func (e *env) assertClean(id string) {
	t := e.t
	t.Helper()
	if _, err := os.Stat(e.net.netnsPath(id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("netns %s still there (err %v)", e.net.netnsPath(id), err)
	}
	if _, err := os.Stat(e.net.recordPath(id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("attachment record still there (err %v)", err)
	}
	if ips := e.ipamEntries(); len(ips) != 0 {
		t.Errorf("host-local still holds %v", ips)
	}
	// No thread of ours stayed in a sandbox namespace (that would keep the
	// namespace alive after its unmount).
	host := startNetns
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		if ns, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/net"); err == nil && ns != host {
			t.Errorf("thread %s is still in network namespace %s", task.Name(), ns)
		}
	}
	if atts, err := e.net.cniConfig().GetCachedAttachments(id); err != nil || len(atts) != 0 {
		t.Errorf("libcni cache still has %d attachments (err %v)", len(atts), err)
	}
	// The host end of the veth goes when its namespace does (asynchronously).
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return len(e.bridgePorts()) == 0, nil
	})
	if err != nil {
		t.Errorf("host bridge %s still has ports %v", e.bridge, e.bridgePorts())
	}
}

func (e *env) bridgePorts() []string {
	br, err := netlink.LinkByName(e.bridge)
	if err != nil {
		return nil
	}
	links, _ := netlink.LinkList()
	var out []string
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

func nsHandle(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	h, err := handleAt(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// standInGuest plays the VM's NIC without QEMU (QEMU with a real guest is
// TestQEMUGuest...): a namespace with a veth whose near end replaces the tap
// on the NIC's bridge and whose far end carries the NIC's MAC, like the
// guest's virtio-net would.
func standInGuest(t *testing.T, att *Attachment, nic NIC) (guestNS string) {
	t.Helper()
	guestNS = filepath.Join(t.TempDir(), "h5-guest-"+randHex(3))
	if err := createNetns(guestNS); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeNetns(guestNS) })
	h := nsHandle(t, att.Netns)
	mac, _ := net.ParseMAC(nic.MAC)
	// The veth takes the tap's place and name, so the guard's rules for
	// the tap apply to it.
	tap, err := h.LinkByName(nic.Tap)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDel(tap); err != nil {
		t.Fatal(err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nic.Tap, MTU: nic.MTU}, PeerName: "guest0", PeerHardwareAddr: mac}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	br, err := h.LinkByName(nic.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	l, _ := h.LinkByName(nic.Tap)
	if err := h.LinkSetMaster(l, br); err != nil {
		t.Fatal(err)
	}
	h.LinkSetUp(l)
	peer, _ := h.LinkByName("guest0")
	gnsh, err := netns.GetFromPath(guestNS)
	if err != nil {
		t.Fatal(err)
	}
	defer gnsh.Close()
	if err := h.LinkSetNsFd(peer, int(gnsh)); err != nil {
		t.Fatal(err)
	}
	gh := nsHandle(t, guestNS)
	for _, n := range []string{"lo", "guest0"} {
		l, err := gh.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		gh.LinkSetUp(l)
	}
	return guestNS
}

// udhcpc runs busybox's DHCP client in ns and returns the lease variables
// its script saw on "bound".
func udhcpc(t *testing.T, ns, ifname string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	out := filepath.Join(dir, "lease.env")
	script := filepath.Join(dir, "script.sh")
	os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] && env > "+out+"\nexit 0\n"), 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+ns, "busybox", "udhcpc", "-f", "-q", "-n", "-t", "20", "-T", "2", "-i", ifname, "-s", script)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("udhcpc: %v\n%s", err, b)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatalf("udhcpc bound no lease: %v\n%s", err, b)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	return env
}

// serveIn starts an HTTP server listening in namespace ns.
func serveIn(t *testing.T, ns, addr, body string) {
	t.Helper()
	var ln net.Listener
	if err := inNetns(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, body) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func httpGet(ctx context.Context, url string) (string, error) {
	c := &http.Client{Timeout: 3 * time.Second}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func waitHTTP(t *testing.T, url, want string) {
	t.Helper()
	var last string
	var lastErr error
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		last, lastErr = httpGet(ctx, url)
		return lastErr == nil && last == want, nil
	})
	if err != nil {
		t.Fatalf("GET %s: got %q, err %v; want %q", url, last, lastErr, want)
	}
}

func TestSetupGivesGuestThePodIPAndTeardownLeavesNothing(t *testing.T) {
	e := newEnv(t, "10.245.5.0/24")
	id := "h5-" + randHex(6)
	ctx := context.Background()
	t.Cleanup(func() { e.net.Teardown(ctx, id) })

	start := time.Now()
	att, err := e.net.Setup(ctx, id, PodMeta{
		Namespace: "default", Name: "vm-pod", UID: "uid-1",
		PortMappings: []PortMapping{{HostPort: 18085, ContainerPort: 8080, Protocol: "tcp"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Setup took %v", time.Since(start))
	if len(att.NICs) != 1 || len(att.IPs) != 1 {
		t.Fatalf("attachment %+v: want one NIC and one IP", att)
	}
	nic := att.NICs[0]
	podIP := netip.MustParseAddr(att.IPs[0])
	if !e.subnet.Contains(podIP) || nic.PodIfName != "eth0" || nic.Tap == "" || nic.MTU == 0 {
		t.Fatalf("NIC %+v, IPs %v: want eth0 with an IP in %s, a tap and an MTU", nic, att.IPs, e.subnet)
	}
	if want := netip.MustParseAddr("10.245.5.1"); nic.Gateway != want {
		t.Errorf("gateway %v, want %v", nic.Gateway, want)
	}

	// In the namespace: tap and eth0 on one bridge, eth0 without the pod IP
	// and without the guest's MAC.
	h := nsHandle(t, att.Netns)
	tap, err := h.LinkByName(nic.Tap)
	if err != nil {
		t.Fatalf("tap: %v", err)
	}
	if _, ok := tap.(*netlink.Tuntap); !ok {
		t.Errorf("%s is a %s, want a tap", nic.Tap, tap.Type())
	}
	eth0, _ := h.LinkByName("eth0")
	if eth0.Attrs().MasterIndex == 0 || eth0.Attrs().MasterIndex != tap.Attrs().MasterIndex {
		t.Errorf("eth0 (master %d) and tap (master %d) not on one bridge", eth0.Attrs().MasterIndex, tap.Attrs().MasterIndex)
	}
	if eth0.Attrs().HardwareAddr.String() == nic.MAC {
		t.Errorf("eth0 kept the guest's MAC %s", nic.MAC)
	}
	if addrs, _ := h.AddrList(eth0, netlink.FAMILY_V4); len(addrs) != 0 {
		t.Errorf("eth0 kept IPv4 addresses %v", addrs)
	}

	// Status answers from the record for re-adoption, also in a new
	// Network (a restarted shim).
	again, err := New(e.net.cfg)
	if err != nil {
		t.Fatal(err)
	}
	st, err := again.Status(id)
	if err != nil || st.IPs[0] != att.IPs[0] || st.NICs[0].MAC != nic.MAC || st.Netns != att.Netns {
		t.Fatalf("Status = %+v, %v; want %+v", st, err, att)
	}

	// A stand-in guest NIC takes its address from the DHCP responder and
	// serves HTTP; the host reaches it at the pod IP and through hostPort.
	guest := standInGuest(t, att, nic)
	dctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	// As a caller that copies the attachment into its own types might:
	// without the Bridge field, ServeDHCP finds the tap's bridge itself.
	plain := *att
	plain.NICs = []NIC{nic}
	plain.NICs[0].Bridge = ""
	go func() { done <- ServeDHCP(dctx, &plain) }()
	// DHCP must stay inside the sandbox: listen for it on the node bridge.
	leakedDiscover := sniffUDP(t, e.bridge, 67)
	leakedOffer := sniffUDP(t, e.bridge, 68)
	lease := udhcpc(t, guest, "guest0")
	if n, m := leakedDiscover.Load(), leakedOffer.Load(); n != 0 || m != 0 {
		t.Errorf("DHCP left the sandbox onto the pod network: %d to port 67, %d to port 68", n, m)
	}
	if lease["ip"] != podIP.String() || lease["router"] != "10.245.5.1" || lease["subnet"] != "255.255.255.0" ||
		lease["serverid"] != dhcpServerAddr.String() || lease["hostname"] != "vm-pod" || lease["mtu"] != fmt.Sprint(nic.MTU) {
		t.Errorf("lease %v: want ip %s router 10.245.5.1 mask /24 hostname vm-pod mtu %d", lease, podIP, nic.MTU)
	}
	gh := nsHandle(t, guest)
	gl, _ := gh.LinkByName("guest0")
	if err := gh.AddrAdd(gl, &netlink.Addr{IPNet: &net.IPNet{IP: podIP.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := gh.RouteAdd(&netlink.Route{Gw: net.ParseIP("10.245.5.1")}); err != nil {
		t.Fatal(err)
	}
	serveIn(t, guest, ":8080", "from the guest")
	waitHTTP(t, "http://"+podIP.String()+":8080/", "from the guest")
	waitHTTP(t, "http://10.245.5.1:18085/", "from the guest")
	stop()
	if err := <-done; err != nil {
		t.Errorf("ServeDHCP: %v", err)
	}

	start = time.Now()
	if err := e.net.Teardown(ctx, id); err != nil {
		t.Fatal(err)
	}
	t.Logf("Teardown took %v", time.Since(start))
	e.assertClean(id)
	if err := e.net.Teardown(ctx, id); err != nil {
		t.Errorf("second Teardown: %v", err)
	}
	if _, err := e.net.Status(id); !errors.Is(err, ErrNotFound) {
		t.Errorf("Status after Teardown: %v, want ErrNotFound", err)
	}
	if out, _ := exec.Command("iptables-save", "-t", "nat").Output(); strings.Contains(string(out), "18085") {
		t.Errorf("hostPort rules left in the nat table")
	}
}

// crashAt runs Setup in a child process (this test binary, running
// TestCrashHelper) that stops at the hook point and is killed there with
// SIGKILL: no cleanup, no deferred function runs.
func crashAt(t *testing.T, e *env, id, step string) {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$")
	cmd.Env = append(os.Environ(),
		"H5_CRASH_STEP="+step, "H5_CRASH_ID="+id, "H5_CRASH_READY="+ready,
		"H5_CRASH_CONF="+e.net.cfg.CNIConfDir, "H5_CRASH_NETNS="+e.net.cfg.NetnsDir, "H5_CRASH_CACHE="+e.net.cfg.CacheDir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 60*time.Second, true, func(context.Context) (bool, error) {
		_, err := os.Stat(ready)
		return err == nil, nil
	})
	cmd.Process.Kill()
	cmd.Wait()
	if err != nil {
		t.Fatalf("Setup in the child never reached %s: %v\n%s", step, err, out.String())
	}
}

// TestCrashHelper is the child of crashAt; it does nothing in a normal run.
func TestCrashHelper(t *testing.T) {
	step := os.Getenv("H5_CRASH_STEP")
	if step == "" {
		t.Skip("only run by crashAt")
	}
	hook := func() {
		os.WriteFile(os.Getenv("H5_CRASH_READY"), nil, 0o600)
		select {} // wait for SIGKILL
	}
	switch step {
	case "netns":
		testHookAfterNetns = hook
	case "add":
		testHookAfterAdd = hook
	case "handover":
		testHookAfterHandOver = hook
	default:
		t.Fatalf("unknown step %q", step)
	}
	n, err := New(Config{CNIConfDir: os.Getenv("H5_CRASH_CONF"), CNIBinDirs: []string{cniBinDir},
		NetnsDir: os.Getenv("H5_CRASH_NETNS"), CacheDir: os.Getenv("H5_CRASH_CACHE")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = n.Setup(context.Background(), os.Getenv("H5_CRASH_ID"), PodMeta{Namespace: "default", Name: "crash", UID: "u"})
	t.Fatalf("Setup returned (%v) instead of stopping at %s", err, step)
}

func TestTeardownAfterCrash(t *testing.T) {
	e := newEnv(t, "10.245.6.0/24")
	ctx := context.Background()
	for _, step := range []string{"netns", "add", "handover"} {
		t.Run("killed after "+step, func(t *testing.T) {
			id := "h5-crash-" + randHex(4)
			crashAt(t, e, id, step)
			if step != "netns" && len(e.ipamEntries()) != 1 {
				t.Fatalf("IPAM entries %v after the crash, want the one ADD made", e.ipamEntries())
			}
			if _, err := os.Stat(e.net.netnsPath(id)); err != nil {
				t.Fatalf("crash left no namespace to clean: %v", err)
			}
			if err := e.net.Teardown(ctx, id); err != nil {
				t.Fatal(err)
			}
			e.assertClean(id)
			if err := e.net.Teardown(ctx, id); err != nil {
				t.Errorf("second Teardown: %v", err)
			}
		})
	}
	// The namespace vanished (a reboot): DEL from the cache still frees IPAM.
	t.Run("namespace gone", func(t *testing.T) {
		id := "h5-gone-" + randHex(4)
		if _, err := e.net.Setup(ctx, id, PodMeta{Namespace: "default", Name: "gone", UID: "u"}); err != nil {
			t.Fatal(err)
		}
		if err := removeNetns(e.net.netnsPath(id)); err != nil {
			t.Fatal(err)
		}
		if len(e.ipamEntries()) != 1 {
			t.Fatalf("IPAM entries %v, want one", e.ipamEntries())
		}
		if err := e.net.Teardown(ctx, id); err != nil {
			t.Fatal(err)
		}
		e.assertClean(id)
	})
}

func TestSetupRefusesBadInputAndLeavesNothing(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	n, err := New(Config{CNIConfDir: filepath.Join(dir, "empty"), CNIBinDirs: []string{cniBinDir}, NetnsDir: filepath.Join(dir, "ns"), CacheDir: filepath.Join(dir, "c")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = n.Setup(context.Background(), "h5-noconf", PodMeta{Name: "p"})
	if err == nil || !strings.Contains(err.Error(), "no CNI network configuration") {
		t.Errorf("Setup without a conflist: %v, want a clear error", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "ns")); len(ents) != 0 {
		t.Errorf("namespaces left: %v", ents)
	}
	for _, bad := range []string{"", "../x", "a/b", ".."} {
		if _, err := n.Setup(context.Background(), bad, PodMeta{}); err == nil {
			t.Errorf("Setup(%q) accepted", bad)
		}
	}
}

// BenchmarkSetupTeardown measures one VM sandbox network's Setup (netns,
// CNI ADD of bridge+host-local+portmap, hand-over to bridge+tap, record)
// plus Teardown (CNI DEL, netns removal).
func BenchmarkSetupTeardown(b *testing.B) {
	e := newEnv(b, "10.245.8.0/24")
	ctx := context.Background()
	pod := PodMeta{Namespace: "default", Name: "bench", UID: "u"}
	var setup, teardown time.Duration
	for i := 0; b.Loop(); i++ {
		id := fmt.Sprintf("h5-bench-%d", i)
		t0 := time.Now()
		if _, err := e.net.Setup(ctx, id, pod); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := e.net.Teardown(ctx, id); err != nil {
			b.Fatal(err)
		}
		setup += t1.Sub(t0)
		teardown += time.Since(t1)
	}
	b.ReportMetric(float64(setup.Milliseconds())/float64(b.N), "setup-ms/op")
	b.ReportMetric(float64(teardown.Milliseconds())/float64(b.N), "teardown-ms/op")
	if ips := e.ipamEntries(); len(ips) != 0 {
		b.Errorf("IPAM entries left: %v", ips)
	}
}

// TestGuestCannotSpoof: the guest controls its NIC completely, so vmnet's
// guard must keep it to the MAC and IPv4 address it was given. A stand-in
// guest NIC tries another IP and another MAC.
func TestGuestCannotSpoof(t *testing.T) {
	e := newEnv(t, "10.245.9.0/24")
	id := "h5-spoof-" + randHex(4)
	ctx := context.Background()
	t.Cleanup(func() { e.net.Teardown(ctx, id) })
	att, err := e.net.Setup(ctx, id, PodMeta{Namespace: "default", Name: "spoof", UID: "u"})
	if err != nil {
		t.Fatal(err)
	}
	nic := att.NICs[0]
	podIP := netip.MustParseAddr(att.IPs[0])
	guest := standInGuest(t, att, nic)
	gh := nsHandle(t, guest)
	gl, _ := gh.LinkByName("guest0")
	spoofIP := netip.MustParseAddr("10.245.9.200")
	for _, a := range []netip.Addr{podIP, spoofIP} {
		if err := gh.AddrAdd(gl, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
	}
	serveIn(t, guest, ":8080", "guest")

	// The given address works; the made-up one is unreachable (its ARP
	// answers are dropped), and connections from it go nowhere.
	waitHTTP(t, "http://"+podIP.String()+":8080/", "guest")
	if got, err := httpGet(ctx, "http://"+spoofIP.String()+":8080/"); err == nil {
		t.Errorf("the host reached the guest at an address it was not given: %q", got)
	}
	hostLn, err := net.Listen("tcp", "10.245.9.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostLn.Close()
	go func() {
		for {
			c, err := hostLn.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dialFrom := func(src netip.Addr) error {
		return inNetns(guest, func() error {
			d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
			c, err := d.Dial("tcp", hostLn.Addr().String())
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	if err := dialFrom(podIP); err != nil {
		t.Errorf("guest to host from its own address: %v", err)
	}
	if err := dialFrom(spoofIP); err == nil {
		t.Errorf("guest reached the host from an address it was not given")
	}

	// Another MAC: nothing from it reaches the node's bridge (its FDB
	// never learns it), while the given MAC is learned.
	fdbHas := func(mac string) bool {
		br, err := netlink.LinkByName(e.bridge)
		if err != nil {
			t.Fatal(err)
		}
		ns, _ := netlink.NeighList(br.Attrs().Index, unix.AF_BRIDGE)
		for _, n := range ns {
			if strings.EqualFold(n.HardwareAddr.String(), mac) {
				return true
			}
		}
		// Ports' entries are listed per port, not per bridge.
		for _, p := range e.bridgePorts() {
			l, _ := netlink.LinkByName(p)
			ns, _ := netlink.NeighList(l.Attrs().Index, unix.AF_BRIDGE)
			for _, n := range ns {
				if strings.EqualFold(n.HardwareAddr.String(), mac) {
					return true
				}
			}
		}
		return false
	}
	if !fdbHas(nic.MAC) {
		t.Errorf("the node bridge did not learn the guest's own MAC %s", nic.MAC)
	}
	fake, _ := net.ParseMAC("52:54:00:de:ad:01")
	gh.LinkSetDown(gl)
	if err := gh.LinkSetHardwareAddr(gl, fake); err != nil {
		t.Fatal(err)
	}
	gh.LinkSetUp(gl)
	gh.RouteAdd(&netlink.Route{LinkIndex: gl.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, Gw: net.ParseIP("10.245.9.1")})
	for i := 0; i < 3; i++ {
		dialFrom(podIP) // ARP and SYNs from the fake MAC
	}
	if fdbHas(fake.String()) {
		t.Errorf("frames from a MAC the guest was not given reached the node bridge")
	}
}

// sniffUDP counts the UDP datagrams to port on device dev (broadcasts
// included) until the test ends.
func sniffUDP(t *testing.T, dev string, port int) *atomic.Int32 {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = errors.Join(
				unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, dev),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1))
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatalf("listen on %s:%d: %v", dev, port, err)
	}
	t.Cleanup(func() { pc.Close() })
	var n atomic.Int32
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			n.Add(1)
		}
	}()
	return &n
}

// TestTwoInterfacesBecomeTwoGuestNICs: a pod with a second network (what a
// NAD adds through a meta plugin) gets a second guest NIC; each NIC's MAC
// gets its own address from ServeDHCP. The interfaces are made by hand here
// (no Multus on this machine) and go through the same hand-over and guard.
func TestTwoInterfacesBecomeTwoGuestNICs(t *testing.T) {
	needRoot(t)
	path := filepath.Join(t.TempDir(), "h5-two-"+randHex(3))
	if err := createNetns(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeNetns(path) })
	h := nsHandle(t, path)
	ifaces := []cniIface{
		{name: "eth0", ips: []netip.Prefix{netip.MustParsePrefix("10.245.10.2/24")}, gateway: netip.MustParseAddr("10.245.10.1")},
		{name: "net1", ips: []netip.Prefix{netip.MustParsePrefix("10.245.11.7/24")}},
	}
	for i, ifc := range ifaces {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: ifc.name}, PeerName: fmt.Sprintf("h5peer%d", i)}
		if err := h.LinkAdd(veth); err != nil {
			t.Fatal(err)
		}
		l, _ := h.LinkByName(ifc.name)
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: ifc.ips[0].Addr().AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
		p, _ := h.LinkByName(fmt.Sprintf("h5peer%d", i))
		h.LinkSetUp(l)
		h.LinkSetUp(p)
	}
	att := &Attachment{Netns: path, Hostname: "two-nics"}
	for i, ifc := range ifaces {
		nic, err := handOver(path, i, ifc)
		if err != nil {
			t.Fatal(err)
		}
		att.NICs = append(att.NICs, nic)
	}
	if err := guardNICs(path, att.NICs); err != nil {
		t.Fatal(err)
	}
	if att.NICs[0].Tap == att.NICs[1].Tap || att.NICs[0].Bridge == att.NICs[1].Bridge || att.NICs[0].MAC == att.NICs[1].MAC {
		t.Fatalf("NICs share a tap, bridge or MAC: %+v", att.NICs)
	}
	var guests []string
	for _, nic := range att.NICs {
		guests = append(guests, standInGuest(t, att, nic))
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeDHCP(ctx, att) }()
	for i, g := range guests {
		lease := udhcpc(t, g, "guest0")
		if lease["ip"] != ifaces[i].ips[0].Addr().String() || lease["hostname"] != "two-nics" {
			t.Errorf("NIC %d lease %v, want %s", i, lease, ifaces[i].ips[0].Addr())
		}
		if want := ifaces[i].gateway; want.IsValid() != (lease["router"] != "") || (want.IsValid() && lease["router"] != want.String()) {
			t.Errorf("NIC %d router %q, want %v", i, lease["router"], want)
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("ServeDHCP: %v", err)
	}
}
