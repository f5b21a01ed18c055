package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lf-edge/evelet/bootstrap/intent"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/tests/containerd"
	"sigs.k8s.io/yaml"
)

// device is one evelet agent process with its own state and run roots,
// as on an EVE device (/persist/evelet, /run/evelet).
type device struct {
	t        testing.TB
	dir      string
	joinPath string
	logPath  string
	cmd      *exec.Cmd
	done     chan struct{}
	// source are the agent flags naming where join intent comes from;
	// default: the join file.
	source []string
}

func (d *device) stateDir() string { return filepath.Join(d.dir, "persist") }
func (d *device) runDir() string   { return filepath.Join(d.dir, "run") }
func (d *device) credDir() string  { return filepath.Join(d.stateDir(), "credentials") }

// newDevice prepares a device directory and writes its join file.
func newDevice(t testing.TB, join intent.Join) *device {
	t.Helper()
	d := newBareDevice(t)
	d.writeJoin(join)
	return d
}

// newBareDevice prepares a device directory without join intent.
func newBareDevice(t testing.TB) *device {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "evdev-")
	if err != nil {
		t.Fatal(err)
	}
	d := &device{t: t, dir: dir, joinPath: filepath.Join(dir, "join.yaml"), logPath: filepath.Join(dir, "agent.log")}
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			// Keep the whole log for post-mortems; the tail goes to the test output.
			keep := filepath.Join(os.TempDir(), "evelet-e2e-failed-"+filepath.Base(dir)+".log")
			os.WriteFile(keep, []byte(d.log()), 0o644)
			t.Logf("agent log tail (whole log: %s):\n%s", keep, tail(d.log(), 60))
		}
		// The agent leaves its pods running when it stops, as on a
		// device; on the shared containerd they are this test's to end.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := env.ctrd.RemovePodsLoggingUnder(ctx, dir); err != nil {
			t.Errorf("removing the device's pods: %v", err)
		}
		unmountAll(t, dir)
		os.RemoveAll(dir)
	})
	return d
}

func (d *device) writeJoin(j intent.Join) {
	b, err := yaml.Marshal(j)
	if err != nil {
		d.t.Fatal(err)
	}
	if err := os.WriteFile(d.joinPath, b, 0o600); err != nil {
		d.t.Fatal(err)
	}
}

// start runs `evelet agent` against the shared containerd.
func (d *device) start() {
	d.t.Helper()
	f, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		d.t.Fatal(err)
	}
	src := d.source
	if src == nil {
		src = []string{"--join-file=" + d.joinPath}
	}
	args := append([]string{"agent", "--state-dir=" + d.stateDir(), "--run-dir=" + d.runDir(),
		"--containerd=" + env.ctrd.Endpoint(), "--log-level=debug", "--drain-timeout=1m",
		// In the host's network namespace: the node-local DNS would put
		// its interface on the host (devnet devices run it in their own).
		"--node-dns=false"}, src...)
	d.cmd = exec.Command(env.evelet, args...)
	d.cmd.Stdout, d.cmd.Stderr = f, f
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); f.Close(); close(done) }(d.cmd, d.done)
}

// stop sends SIGTERM (the agent stops the kubelet) and waits; anything still
// alive in the agent's process group after 40 s is killed.
func (d *device) stop() {
	if d.cmd == nil {
		return
	}
	pid := d.cmd.Process.Pid
	syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(40 * time.Second):
		d.t.Errorf("agent did not stop within 40s of SIGTERM")
		syscall.Kill(-pid, syscall.SIGKILL)
		<-d.done
	}
	syscall.Kill(-pid, syscall.SIGKILL) // the kubelet runs in its own group; this is a no-op normally
	d.cmd = nil
}

func (d *device) log() string {
	b, _ := os.ReadFile(d.logPath)
	return string(b)
}

// status runs `evelet status -o json`, as an operator would.
func (d *device) status() (agent.Status, error) {
	out, err := exec.Command(env.evelet, "status", "-o", "json", "--run-dir="+d.runDir()).Output()
	var s agent.Status
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal(out, &s)
}

func (d *device) waitStatus(timeout time.Duration, what string, ok func(agent.Status) bool) agent.Status {
	d.t.Helper()
	var last agent.Status
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if s, err := d.status(); err == nil {
			last = s
			if ok(s) {
				return s
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	d.t.Fatalf("timed out after %v waiting for %s; last status %+v", timeout, what, last)
	return last
}

func unmountAll(t testing.TB, dir string) {
	mounts, err := containerd.Mounts(dir)
	if err != nil {
		t.Logf("mounts under %s: %v", dir, err)
		return
	}
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			t.Logf("unmount %s: %v", m, err)
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func waitFor(t testing.TB, timeout time.Duration, what string, f func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		ok, err := f()
		if ok {
			return
		}
		lastErr = err
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s (last error: %v)", timeout, what, lastErr)
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func contains(haystack string, needles ...string) bool {
	for _, n := range needles {
		if !bytes.Contains([]byte(haystack), []byte(n)) {
			return false
		}
	}
	return true
}

func readDirNames(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, err
}

// kill9 kills the agent with SIGKILL, as a crash or the OOM killer would,
// and waits until it is reaped. The kubelet child dies with it (Pdeathsig);
// pods keep running in containerd.
// waitKubeletSettled waits until the node runs the kubelet it keeps: the
// one behind the local API cache. Right after a join the kubelet
// bootstraps directly and the agent restarts it onto the cache once it has
// its client certificate, so a test that holds on to the kubelet's pid
// takes it from here.
func (d *device) waitKubeletSettled(timeout time.Duration) agent.Status {
	return d.waitStatus(timeout, "Running with the kubelet through the API cache", func(s agent.Status) bool {
		return s.Phase == agent.PhaseRunning && s.KubeletPID != 0 && s.APICache != nil && s.APICache.KubeletThroughCache
	})
}

func (d *device) kill9() {
	d.t.Helper()
	if d.cmd == nil {
		return
	}
	syscall.Kill(d.cmd.Process.Pid, syscall.SIGKILL)
	<-d.done
	d.cmd = nil
}
