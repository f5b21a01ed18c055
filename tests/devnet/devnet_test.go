package devnet

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lf-edge/evelet/tests/internal/cgroups"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// helperEnv makes the test binary a stand-in process that just waits to
// be killed: its command line is whatever the test gives it, so it can
// pose as a shim ("-address <socket>") without being one.
const helperEnv = "H1_DEVNET_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		for {
			unix.Pause() // until the test's SIGKILL
		}
	}
	os.Exit(m.Run())
}

// startHelper runs the stand-in with argv[1:] = args, through nsenter into
// netnsPath when that is set; t.Cleanup kills and reaps it.
func startHelper(t *testing.T, netnsPath string, args ...string) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, args...)
	if netnsPath != "" {
		cmd = exec.Command("nsenter", append([]string{"--net=" + netnsPath, "--", self}, args...)...)
	}
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	return cmd
}

// TestNetDevicePowerOff exercises devnet's host plumbing without a cluster:
// the bridge, a device's namespace and veth (the host reaches a socket in
// the namespace at the device's address), and the power-off sweep: the
// processes in the namespace, in the cgroup root and posing as its shims
// die, an unrelated one lives, mounts, namespace, veth and cgroups go.
func TestNetDevicePowerOff(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root (network namespaces, bridges, cgroups, mounts)")
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skip("nsenter not installed (util-linux)")
	}
	n, err := NewNet(NetOptions{Bridge: "h1dnet0", CIDR: "10.251.0.0/24", Prefix: "h1dv"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	if n.HostIP() != "10.251.0.1" {
		t.Fatalf("host IP %s, want 10.251.0.1", n.HostIP())
	}
	d := &Device{n: 1, net: n, dir: t.TempDir(), nsName: "h1dv-1", hostVeth: "h1dv1h",
		ip: n.deviceIP(1), cgroup: "/h1dv-1", ctrdSock: "/tmp/h1-devnet-test/containerd.sock"}
	t.Cleanup(func() { d.powerOffLocked() })
	if err := d.ensureNetNSLocked(); err != nil {
		t.Fatal(err)
	}
	if d.IP() != "10.251.0.11" {
		t.Fatalf("device IP %s, want 10.251.0.11", d.IP())
	}

	// A listener inside the namespace, reached from the host over the bridge.
	ln := listenIn(t, netnsPath(d.nsName), d.IP()+":0")
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte("from-the-device"))
			c.Close()
		}
	}()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatalf("host -> device %s: %v", ln.Addr(), err)
	}
	buf := make([]byte, 64)
	k, _ := c.Read(buf)
	c.Close()
	if string(buf[:k]) != "from-the-device" {
		t.Fatalf("read %q from the device", buf[:k])
	}

	// The three kinds of the device's processes, and one that is not.
	inNS := startHelper(t, netnsPath(d.nsName), "in-netns")
	if err := cgroups.MakeRoot(d.cgroup); err != nil {
		t.Fatal(err)
	}
	inCg := startHelper(t, "", "in-cgroup")
	for _, dir := range cgroups.Dirs(d.cgroup) {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(inCg.Process.Pid)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	shim := startHelper(t, "", "-namespace", "k8s.io", "-address", d.ctrdSock, "-id", "x")
	other := startHelper(t, "", "-address", "/tmp/h1-devnet-test/other.sock")
	got := map[int]bool{}
	for _, p := range d.owner().pids() {
		got[p] = true
	}
	for name, p := range map[string]int{"in-netns": inNS.Process.Pid, "in-cgroup": inCg.Process.Pid, "shim": shim.Process.Pid} {
		if !got[p] {
			t.Errorf("%s (pid %d) not found as the device's: %v", name, p, got)
		}
	}
	if got[other.Process.Pid] {
		t.Errorf("an unrelated process (pid %d) counted as the device's", other.Process.Pid)
	}
	mnt := filepath.Join(d.dir, "run", "vol")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}

	if err := d.powerOffLocked(); err != nil {
		t.Fatal(err)
	}
	if left := d.Leftovers(); len(left) > 0 {
		t.Errorf("left after power-off: %v", left)
	}
	for name, cmd := range map[string]*exec.Cmd{"in-netns": inNS, "in-cgroup": inCg, "shim": shim} {
		if alive(cmd.Process.Pid) {
			t.Errorf("%s (pid %d) survived the power-off", name, cmd.Process.Pid)
		}
	}
	if !alive(other.Process.Pid) {
		t.Errorf("the unrelated process was killed")
	}

	// A second boot plugs the same address in again.
	if err := d.ensureNetNSLocked(); err != nil {
		t.Fatal(err)
	}
	ln2 := listenIn(t, netnsPath(d.nsName), d.IP()+":0")
	ln2.Close()
	if err := d.powerOffLocked(); err != nil {
		t.Fatal(err)
	}
	if left := d.Leftovers(); len(left) > 0 {
		t.Errorf("left after the second power-off: %v", left)
	}
}

// alive: the process exists and is not a zombie waiting to be reaped.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == ')' {
			return i+2 < len(b) && b[i+2] != 'Z'
		}
	}
	return false
}

// listenIn opens a TCP listener inside the namespace at path: the socket
// is created by a thread switched into it (and back).
func listenIn(t *testing.T, path, addr string) net.Listener {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	ln, lerr := net.Listen("tcp", addr)
	if err := netns.Set(orig); err != nil {
		t.Fatal(err) // the thread stays locked and dies with the goroutine
	}
	runtime.UnlockOSThread()
	if lerr != nil {
		t.Fatal(lerr)
	}
	return ln
}

// TestSweepStale: what a killed run left under a device's names (a
// namespace with a process in it, a veth, a cgroup root with a process)
// is gone before the device of the same number is made again.
func TestSweepStale(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root (network namespaces, bridges, cgroups)")
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skip("nsenter not installed (util-linux)")
	}
	n, err := NewNet(NetOptions{Bridge: "h1dnet1", CIDR: "10.252.0.0/24", Prefix: "h1ds"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	mk := func() *Device {
		return &Device{n: 2, net: n, dir: t.TempDir(), nsName: "h1ds-2", hostVeth: "h1ds2h", ip: n.deviceIP(2), cgroup: "/h1ds-2"}
	}
	old := mk()
	t.Cleanup(func() { old.powerOffLocked() })
	if err := old.ensureNetNSLocked(); err != nil {
		t.Fatal(err)
	}
	inNS := startHelper(t, netnsPath(old.nsName), "stale-in-netns")
	if err := cgroups.MakeRoot(old.cgroup); err != nil {
		t.Fatal(err)
	}
	inCg := startHelper(t, "", "stale-in-cgroup")
	for _, dir := range cgroups.Dirs(old.cgroup) {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(inCg.Process.Pid)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The run that made them is gone; a new one makes device 2 again.
	d := mk()
	if err := d.sweepStale(); err != nil {
		t.Fatal(err)
	}
	for name, cmd := range map[string]*exec.Cmd{"in-netns": inNS, "in-cgroup": inCg} {
		if alive(cmd.Process.Pid) {
			t.Errorf("stale %s (pid %d) survived", name, cmd.Process.Pid)
		}
	}
	if left := old.Leftovers(); len(left) > 0 {
		t.Errorf("left after the sweep: %v", left)
	}
}

// TestNewNetRefusesASubnetInUse: another interface holding an address in
// the harness's subnet makes NewNet refuse at once, naming the interface,
// and leaves no bridge (a harness that went ahead timed out after minutes
// of discovery retries, its replies leaving by the wrong link).
func TestNewNetRefusesASubnetInUse(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root (creates links on the host)")
	}
	dummy := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "h1dtaken0"}, PeerName: "h1dtaken1"}
	if err := netlink.LinkAdd(dummy); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.LinkDel(dummy) })
	addr, _ := netlink.ParseAddr("10.253.7.1/24")
	if err := netlink.AddrAdd(dummy, addr); err != nil {
		t.Fatal(err)
	}
	n, err := NewNet(NetOptions{Bridge: "h1dtakenbr", CIDR: "10.253.7.0/24", Prefix: "h1dt"})
	if err == nil {
		n.Close()
		t.Fatal("NewNet took a subnet another interface holds")
	}
	if !strings.Contains(err.Error(), "h1dtaken0") || !strings.Contains(err.Error(), "10.253.7.0/24") {
		t.Fatalf("error does not name the interface and subnet: %v", err)
	}
	if _, lerr := netlink.LinkByName("h1dtakenbr"); lerr == nil {
		t.Fatal("the refused bridge was left behind")
	}
	// A free subnet still works.
	n, err = NewNet(NetOptions{Bridge: "h1dtakenbr", CIDR: "10.253.8.0/24", Prefix: "h1dt"})
	if err != nil {
		t.Fatal(err)
	}
	n.Close()
}
