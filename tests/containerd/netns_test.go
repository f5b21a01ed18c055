package containerd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestNetNSAndRunDir: with NetNS, containerd and its shims run in that
// network namespace and the pod bridge is made there, not on the host;
// with RunDir, the socket and the volatile state live there; Stop leaves
// no shim, process or mount behind and does not touch the host's network.
func TestNetNSAndRunDir(t *testing.T) {
	needRealContainerd(t)
	if _, err := findBinary("", "nsenter"); err != nil {
		t.Skip("needs nsenter (util-linux)")
	}
	const nsName, bridge, cidr = "h1-ctrdns", "h1ctrd0", "10.214.1.0/24"
	exec.Command("ip", "netns", "delete", nsName).Run() // a leftover of a killed run
	if out, err := exec.Command("ip", "netns", "add", nsName).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", nsName).Run() })
	nsPath := "/run/netns/" + nsName
	if out, err := exec.Command("ip", "-n", nsName, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	pause, bb := testImages(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir, run := t.TempDir(), t.TempDir()
	c, err := Start(ctx, Options{Dir: dir, RunDir: run, NetNS: nsPath, PodCIDR: cidr, BridgeName: bridge,
		NetworkName: "h1-ctrdns", RestrictOOMScoreAdj: true})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			c.Stop()
		}
	})
	run, _ = filepath.EvalSymlinks(run)
	if !strings.HasPrefix(c.Socket(), run+"/") {
		t.Errorf("socket %s not under RunDir %s", c.Socket(), run)
	}
	if err := c.ImportImages(ctx, pause, bb); err != nil {
		t.Fatal(err)
	}
	conn, err := c.DialCRI()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	p := runPod(ctx, t, rs, "netns", "sleep 3600")
	ctrPID := waitRunning(ctx, t, rs, p.ctrID)
	ip, _ := sandboxIPAndPID(ctx, t, rs, p.id)
	if ip == nil || !strings.HasPrefix(ip.String(), "10.214.1.") {
		t.Errorf("sandbox IP %v not in %s", ip, cidr)
	}

	nsIno := inode(t, nsPath)
	if got := procNetNS(c.PID()); got != fmt.Sprintf("net:[%d]", nsIno) {
		t.Errorf("containerd (pid %d) in %s, want the namespace net:[%d]", c.PID(), got, nsIno)
	}
	shims := c.ShimPIDs()
	if len(shims) == 0 {
		t.Errorf("no shim found for %s", c.Socket())
	}
	for _, pid := range shims {
		if got := procNetNS(pid); got != fmt.Sprintf("net:[%d]", nsIno) {
			t.Errorf("shim %d in %s, want the namespace net:[%d]", pid, got, nsIno)
		}
	}
	if _, err := netlink.LinkByName(bridge); err == nil {
		t.Errorf("bridge %s made on the host", bridge)
	}
	h, err := netlinkIn(nsName)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName(bridge); err != nil {
		t.Errorf("bridge %s not in the namespace: %v", bridge, err)
	}
	h.Close()
	if m, _ := Mounts(run); len(m) == 0 {
		t.Errorf("no mount under RunDir %s while a pod runs (rootfs, netns)", run)
	}

	stopped = true
	if err := c.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if s := c.ShimPIDs(); len(s) != 0 {
		t.Errorf("shims after Stop: %v", s)
	}
	if processAlive(ctrPID) {
		t.Errorf("container process %d alive after Stop", ctrPID)
	}
	for _, d := range []string{dir, run} {
		if m, err := Mounts(d); err != nil || len(m) != 0 {
			t.Errorf("mounts under %s after Stop: %v %v", d, m, err)
		}
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func procNetNS(pid int) string {
	l, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	return l
}

func netlinkIn(name string) (*netlink.Handle, error) {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns)
}
