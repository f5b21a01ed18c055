package containerd

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lf-edge/evelet/internal/syncbuf"

	"github.com/vishvananda/netlink"
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	crictrd "github.com/lf-edge/evelet/cri/containerd"
	"github.com/lf-edge/evelet/images"
)

const hostBusybox = "/bin/busybox"

var imageDir string

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "evelet-ctrd-images-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	imageDir = d
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}

// needRealContainerd skips unless this machine can run containers: root,
// containerd, its runc shim, runc, the CNI plugins, a static busybox and go.
func needRealContainerd(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run containerd, runc and CNI")
	}
	for _, b := range []string{"containerd", "ctr", "containerd-shim-runc-v2", "runc"} {
		if _, err := findBinary("", b); err != nil {
			t.Skipf("needs %s (apt-get install containerd runc): %v", b, err)
		}
	}
	for _, p := range []string{"bridge", "host-local", "portmap", "loopback"} {
		if _, err := os.Stat(filepath.Join(defaultCNIBinDir, p)); err != nil {
			t.Skipf("needs the CNI plugins in %s (apt-get install containernetworking-plugins): %v", defaultCNIBinDir, err)
		}
	}
	if _, err := os.Stat(hostBusybox); err != nil {
		t.Skipf("needs a static busybox at %s (apt-get install busybox-static)", hostBusybox)
	}
	if _, err := goCommand(); err != nil {
		t.Skipf("needs the go command to build pause: %v", err)
	}
}

func goCommand() (string, error) {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); runtime.GOROOT() != "" {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return exec.LookPath("go")
}

var (
	buildOnce       sync.Once
	pauseTar, bbTar string
	buildErr        error
)

// testImages builds pause and busybox once per test binary.
func testImages(t *testing.T) (string, string) {
	t.Helper()
	buildOnce.Do(func() {
		goBin, err := goCommand()
		if err != nil {
			buildErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if pauseTar, buildErr = images.BuildPause(ctx, goBin, "", imageDir); buildErr != nil {
			return
		}
		bbTar, buildErr = images.BuildBusybox(hostBusybox, imageDir)
	})
	if buildErr != nil {
		t.Fatalf("building test images: %v", buildErr)
	}
	return pauseTar, bbTar
}

// startHarness starts containerd with its own bridge and subnet, imports
// the test images, and stops everything when the test ends.
func startHarness(t *testing.T, bridge, cidr string, log io.Writer) (*Containerd, runtimeapi.RuntimeServiceClient) {
	t.Helper()
	pause, bb := testImages(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := Start(ctx, Options{
		Dir:                 t.TempDir(),
		PodCIDR:             cidr,
		BridgeName:          bridge,
		RestrictOOMScoreAdj: true, // the test machines lack CAP_SYS_RESOURCE
		Log:                 log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
		if t.Failed() {
			t.Logf("containerd log (%s):\n%s", c.LogPath(), c.logTail())
		}
	})
	t.Logf("containerd pid %d ready on %s in %v", c.PID(), c.Socket(), time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := c.ImportImages(ctx, pause, bb); err != nil {
		t.Fatal(err)
	}
	t.Logf("imported pause and busybox in %v", time.Since(start).Round(time.Millisecond))
	conn, err := c.DialCRI()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return c, runtimeapi.NewRuntimeServiceClient(conn)
}

type pod struct {
	id, ctrID string
	logDir    string
	config    *runtimeapi.PodSandboxConfig
}

// runPod starts a pod sandbox with one busybox container running script.
func runPod(ctx context.Context, t *testing.T, rs runtimeapi.RuntimeServiceClient, name, script string) pod {
	t.Helper()
	p := pod{logDir: t.TempDir()}
	p.config = &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{
			Name: name, Uid: name + "-uid", Namespace: "default",
		},
		Hostname:     name,
		LogDirectory: p.logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD},
			},
		},
	}
	sb, err := rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: p.config})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	p.id = sb.GetPodSandboxId()
	cr, err := rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: p.id,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "main"},
			Image:    &runtimeapi.ImageSpec{Image: images.BusyboxRef},
			Command:  []string{"sh", "-c", script},
			LogPath:  "main.log",
		},
		SandboxConfig: p.config,
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	p.ctrID = cr.GetContainerId()
	if _, err := rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: p.ctrID}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	return p
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last: %s", timeout, what, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func containerState(ctx context.Context, rs runtimeapi.RuntimeServiceClient, id string) (runtimeapi.ContainerState, int, error) {
	st, err := rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		return 0, 0, err
	}
	var info struct {
		Pid int `json:"pid"`
	}
	_ = json.Unmarshal([]byte(st.GetInfo()["info"]), &info)
	return st.GetStatus().GetState(), info.Pid, nil
}

func waitRunning(ctx context.Context, t *testing.T, rs runtimeapi.RuntimeServiceClient, id string) int {
	t.Helper()
	var pid int
	waitFor(t, "container "+id+" RUNNING", 30*time.Second, func() (bool, string) {
		st, p, err := containerState(ctx, rs, id)
		if err != nil {
			return false, err.Error()
		}
		pid = p
		return st == runtimeapi.ContainerState_CONTAINER_RUNNING, st.String()
	})
	return pid
}

func readLog(p pod) string {
	b, _ := os.ReadFile(filepath.Join(p.logDir, "main.log"))
	return string(b)
}

func sandboxIPAndPID(ctx context.Context, t *testing.T, rs runtimeapi.RuntimeServiceClient, id string) (net.IP, int) {
	t.Helper()
	st, err := rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		t.Fatalf("PodSandboxStatus: %v", err)
	}
	if st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Errorf("sandbox state %v, want READY", st.GetStatus().GetState())
	}
	var info struct {
		Pid int `json:"pid"`
	}
	_ = json.Unmarshal([]byte(st.GetInfo()["info"]), &info)
	return net.ParseIP(st.GetStatus().GetNetwork().GetIp()), info.Pid
}

// assertNothingLeft checks what Stop promised: no shim serving our socket,
// no container process, no mount under Dir, no bridge, no NAT rule.
func assertNothingLeft(t *testing.T, c *Containerd, bridge string, pids []int, sandboxIDs []string) {
	t.Helper()
	if shims := c.ShimPIDs(); len(shims) != 0 {
		t.Errorf("shims still running after Stop: %v", shims)
	}
	if shims := findProcs(func(argv []string) bool {
		return strings.Contains(strings.Join(argv, " "), c.Socket())
	}); len(shims) != 0 {
		t.Errorf("processes mentioning %s after Stop: %v", c.Socket(), shims)
	}
	for _, p := range pids {
		if p > 0 && processAlive(p) {
			t.Errorf("container process %d still alive after Stop", p)
		}
	}
	if m, err := Mounts(c.l.dir); err != nil || len(m) != 0 {
		t.Errorf("mounts under %s after Stop: %v %v", c.l.dir, m, err)
	}
	if _, err := netlink.LinkByName(bridge); err == nil {
		t.Errorf("bridge %s still exists after Stop", bridge)
	}
	if c.PID() != 0 {
		t.Errorf("PID() = %d after Stop", c.PID())
	}
	if out, err := exec.Command("iptables", "-t", "nat", "-S").Output(); err == nil {
		for _, id := range sandboxIDs {
			if strings.Contains(string(out), id) {
				t.Errorf("NAT rules for sandbox %s left after Stop", id)
			}
		}
	}
	for _, id := range sandboxIDs {
		if m, _ := filepath.Glob("/var/lib/cni/results/*" + id + "*"); len(m) != 0 {
			t.Errorf("CNI result cache left: %v", m)
		}
	}
}

func TestPodLifecycle(t *testing.T) {
	needRealContainerd(t)
	const bridge, cidr = "evtst-lc0", "10.213.1.0/24"
	log := &syncbuf.Buffer{}
	c, rs := startHarness(t, bridge, cidr, log)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if !strings.Contains(log.String(), "containerd successfully booted") {
		t.Errorf("Options.Log did not get containerd's log")
	}

	v, err := rs.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("CRI runtime %s %s (API %s)", v.GetRuntimeName(), v.GetRuntimeVersion(), v.GetRuntimeApiVersion())

	// The directories the guardrails protect because containerd names them
	// (cri/containerd.RuntimeDirs), from this real containerd's answer.
	dirs, err := crictrd.RuntimeDirs(ctx, rs)
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{}
	for _, d := range dirs {
		named[d.Path] = true
	}
	for _, want := range []string{filepath.Join(c.Dir(), "root"), c.CNIConfDir()} {
		if !named[want] {
			t.Errorf("RuntimeDirs %v lacks %s", dirs, want)
		}
	}

	start := time.Now()
	p := runPod(ctx, t, rs, "lifecycle", "echo hello-evelet; sleep 3600")
	ctrPID := waitRunning(ctx, t, rs, p.ctrID)
	t.Logf("pod %s running in %v", p.id[:12], time.Since(start).Round(time.Millisecond))

	waitFor(t, "hello-evelet in the container log", 10*time.Second, func() (bool, string) {
		l := readLog(p)
		return strings.Contains(l, "hello-evelet"), l
	})
	ip, sbPID := sandboxIPAndPID(ctx, t, rs, p.id)
	_, subnet, _ := net.ParseCIDR(cidr)
	if ip == nil || !subnet.Contains(ip) {
		t.Errorf("sandbox IP %v not in %s", ip, cidr)
	}
	t.Logf("sandbox IP %v, pause pid %d, container pid %d", ip, sbPID, ctrPID)
	if link, err := netlink.LinkByName(bridge); err != nil {
		t.Errorf("bridge %s missing while a pod runs: %v", bridge, err)
	} else if link.Type() != "bridge" {
		t.Errorf("%s is a %s", bridge, link.Type())
	}

	// ImportImages reports ctr's own words when the tarball is bad.
	bad := filepath.Join(t.TempDir(), "bad.tar")
	os.WriteFile(bad, []byte("not an image"), 0o644)
	if err := c.ImportImages(ctx, bad); err == nil || !strings.Contains(err.Error(), "ctr:") {
		t.Errorf("importing garbage: %v", err)
	}

	if _, err := rs.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: p.ctrID, Timeout: 0}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	if st, _, err := containerState(ctx, rs, p.ctrID); err != nil || st != runtimeapi.ContainerState_CONTAINER_EXITED {
		t.Errorf("after StopContainer: %v %v", st, err)
	}
	if _, err := rs.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: p.ctrID}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	list, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil || len(list.GetItems()) != 0 {
		t.Errorf("pods after removal: %v %v", list.GetItems(), err)
	}

	// A second pod stays running: Stop removes it through the CRI.
	p2 := runPod(ctx, t, rs, "leftover", "sleep 3600")
	ctr2PID := waitRunning(ctx, t, rs, p2.ctrID)
	ip2, sb2PID := sandboxIPAndPID(ctx, t, rs, p2.id)
	if ip2 == nil || !subnet.Contains(ip2) {
		t.Errorf("second sandbox IP %v not in %s", ip2, cidr)
	}

	start = time.Now()
	if err := c.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Logf("stopped (one pod left running) in %v", time.Since(start).Round(time.Millisecond))
	assertNothingLeft(t, c, bridge, []int{ctrPID, sbPID, ctr2PID, sb2PID}, []string{p.id, p2.id})
	// host-local keeps one file per reserved address, named by the address.
	ents, _ := os.ReadDir(filepath.Join(c.l.ipamDataDir, c.l.network))
	for _, e := range ents {
		if net.ParseIP(e.Name()) != nil {
			t.Errorf("host-local still holds %s after Stop", e.Name())
		}
	}
}

// TestRestartKeepsContainers proves a running container survives a restart
// of containerd (same ID, still RUNNING, its log still fed), then leaves
// the pod running and relies on Stop's forced cleanup (no CRI) to remove
// it: shims, containers, NAT rules, mounts and the bridge.
func TestRestartKeepsContainers(t *testing.T) {
	needRealContainerd(t)
	const bridge, cidr = "evtst-rs0", "10.213.2.0/24"
	c, rs := startHarness(t, bridge, cidr, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	p := runPod(ctx, t, rs, "restart", "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 1; done")
	ctrPID := waitRunning(ctx, t, rs, p.ctrID)
	_, sbPID := sandboxIPAndPID(ctx, t, rs, p.id)
	shimsBefore := c.ShimPIDs()
	if len(shimsBefore) != 1 {
		t.Errorf("shims for one pod: %v, want one", shimsBefore)
	}
	oldPID := c.PID()

	start := time.Now()
	if err := c.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	t.Logf("containerd restarted (pid %d -> %d) in %v", oldPID, c.PID(), time.Since(start).Round(time.Millisecond))
	if c.PID() == oldPID || c.PID() == 0 {
		t.Errorf("PID after restart %d (before %d)", c.PID(), oldPID)
	}
	if shims := c.ShimPIDs(); fmt.Sprint(shims) != fmt.Sprint(shimsBefore) {
		t.Errorf("shims changed across restart: %v -> %v", shimsBefore, shims)
	}

	// The old connection reconnects by itself; use it as a client would.
	list, err := rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("ListContainers after restart: %v", err)
	}
	if len(list.GetContainers()) != 1 || list.GetContainers()[0].GetId() != p.ctrID {
		t.Fatalf("containers after restart: %v, want just %s", list.GetContainers(), p.ctrID)
	}
	st, pid, err := containerState(ctx, rs, p.ctrID)
	if err != nil || st != runtimeapi.ContainerState_CONTAINER_RUNNING || pid != ctrPID {
		t.Fatalf("after restart: state %v pid %d (was %d) err %v", st, pid, ctrPID, err)
	}
	if _, sbPID2 := sandboxIPAndPID(ctx, t, rs, p.id); sbPID2 != sbPID {
		t.Errorf("pause pid %d after restart, was %d", sbPID2, sbPID)
	}
	// The container's output still reaches its log after the restart.
	mark := strings.Count(readLog(p), "tick-")
	waitFor(t, "new log lines after the restart", 10*time.Second, func() (bool, string) {
		l := readLog(p)
		return strings.Count(l, "tick-") >= mark+2, l
	})

	// Leave the pod running: Stop must clean up without the CRI. The
	// killed shim cannot remove its socket; Stop must find and remove it.
	var shimSockets []string
	for _, pid := range c.ShimPIDs() {
		s := shimSocket(pid)
		if st, err := os.Stat(s); err != nil || st.Mode()&os.ModeSocket == 0 {
			t.Errorf("shim %d: derived socket %q does not exist (%v)", pid, s, err)
		}
		shimSockets = append(shimSockets, s)
	}
	c.skipCRICleanup = true
	start = time.Now()
	if err := c.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Logf("forced stop in %v", time.Since(start).Round(time.Millisecond))
	assertNothingLeft(t, c, bridge, []int{ctrPID, sbPID}, []string{p.id})
	for _, s := range shimSockets {
		if _, err := os.Lstat(s); err == nil {
			t.Errorf("shim socket %s left after Stop", s)
		}
	}
}

// TestStartFailureReportsLog: when the CRI never becomes ready, Start gives
// up after StartTimeout, leaves no containerd behind and quotes its log.
func TestStartFailureReportsLog(t *testing.T) {
	needRealContainerd(t)
	// A Dir too long for a socket path: the socket goes to /tmp/evctrd-*,
	// which a failed Start must remove again.
	dir := filepath.Join(t.TempDir(), strings.Repeat("x", 50), strings.Repeat("y", 50))
	before, _ := filepath.Glob("/tmp/evctrd-*")
	start := time.Now()
	c, err := Start(context.Background(), Options{
		Dir:                 dir,
		BridgeName:          "evtst-fail0",
		Snapshotter:         "no-such-snapshotter",
		RestrictOOMScoreAdj: true,
		StartTimeout:        3 * time.Second,
	})
	if err == nil {
		c.Stop()
		t.Fatal("Start succeeded with an unknown snapshotter")
	}
	t.Logf("Start failed after %v:\n%v", time.Since(start).Round(time.Millisecond), err)
	if !strings.Contains(err.Error(), "CRI plugin is not loaded") || !strings.Contains(err.Error(), "no-such-snapshotter") {
		t.Errorf("error lacks the reason or the log tail")
	}
	if !strings.Contains(err.Error(), "/tmp/evctrd-") {
		t.Errorf("the socket did not move to a short directory")
	}
	if procs := findProcs(func(argv []string) bool {
		return strings.Contains(strings.Join(argv, " "), dir)
	}); len(procs) != 0 {
		t.Errorf("processes left after a failed Start: %v", procs)
	}
	if after, _ := filepath.Glob("/tmp/evctrd-*"); len(after) > len(before) {
		t.Errorf("short socket directories left: %v (before: %v)", after, before)
	}
}

// TestStopSweepsMasqueradeOfVanishedNetns: the bridge plugin cannot remove
// a pod's masquerade chain when the pod's network namespace is gone before
// DEL (it reads the addresses from there). Stop still leaves no NAT rule of
// the pod behind.
func TestStopSweepsMasqueradeOfVanishedNetns(t *testing.T) {
	needRealContainerd(t)
	const bridge, cidr = "evtst-mq0", "10.213.3.0/24"
	c, rs := startHarness(t, bridge, cidr, io.Discard)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := runPod(ctx, t, rs, "vanish", "sleep 3600")
	ctrPID := waitRunning(ctx, t, rs, p.ctrID)
	_, sbPID := sandboxIPAndPID(ctx, t, rs, p.id)
	st, err := rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.id, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct{ Type, Path string } `json:"namespaces"`
			} `json:"linux"`
		} `json:"runtimeSpec"`
	}
	if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &info); err != nil {
		t.Fatal(err)
	}
	netns := ""
	for _, ns := range info.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			netns = ns.Path
		}
	}
	if netns == "" {
		t.Fatal("no network namespace path in the sandbox's spec")
	}
	if out, err := exec.Command("iptables", "-t", "nat", "-S").Output(); err != nil || !strings.Contains(string(out), p.id) {
		t.Fatalf("no masquerade rule for the pod while it runs: %v", err)
	}
	// The namespace's bind mount goes (as after a crash that took it).
	if err := syscall.Unmount(netns, syscall.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(netns); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Logf("Stop: %v", err)
	}
	assertNothingLeft(t, c, bridge, []int{ctrPID, sbPID}, []string{p.id})
}
