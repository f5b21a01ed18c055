package main

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testPreflight checks a fresh directory with no bridge, no cgroup, a lock
// of its own and the given ports.
func testPreflight(t *testing.T, ports ...port) preflight {
	d := t.TempDir()
	return preflight{
		dir: filepath.Join(d, "demo"), ports: ports, bridge: bridgeName,
		lock:         &hostLock{lock: filepath.Join(d, "lock"), owner: filepath.Join(d, "owner.json")},
		clearCgroups: func() error { return nil },
		linkExists:   func(string) bool { return false },
		linkDel:      func(string) error { return errors.New("no link") },
	}
}

// wantRefusal checks the refusal is one line that names the culprit and
// tells the fix.
func wantRefusal(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatal("preflight passed, want a refusal")
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Errorf("refusal is more than one line: %q", msg)
	}
	for _, p := range append(parts, "make demo-down") {
		if !strings.Contains(msg, p) {
			t.Errorf("refusal %q does not say %q", msg, p)
		}
	}
}

func TestPreflightPassesWhenNothingIsTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	free := l.Addr().(*net.TCPAddr).Port
	l.Close()
	if err := testPreflight(t, port{free, "a test port"}).check(); err != nil {
		t.Fatalf("refused: %v", err)
	}
}

// A port held open (here by this test, on loopback only: the kubelet binds
// every address, so that collides too) is named with its holder.
func TestPreflightRefusesPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	p := l.Addr().(*net.TCPAddr).Port
	err = testPreflight(t, port{p, "the demo kubelet's API port"}).check()
	wantRefusal(t, err, "port "+strconv.Itoa(p), "the demo kubelet's API port",
		"by pid "+strconv.Itoa(os.Getpid()))
}

// A demo holding the machine lock is refused, with where it was started
// when that is another clone.
func TestPreflightRefusesRunningDemo(t *testing.T) {
	pf := testPreflight(t)
	other := &hostLock{lock: pf.lock.lock, owner: pf.lock.owner}
	if err := other.take("/elsewhere/_output/demo"); err != nil {
		t.Fatal(err)
	}
	defer other.unlock()
	wantRefusal(t, pf.check(), "already running", "pid "+strconv.Itoa(os.Getpid()), "/elsewhere/_output/demo")

	other.unlock()
	if err := pf.check(); err != nil {
		t.Fatalf("refused after the lock was released: %v", err)
	}
}

// The lock is the kernel's: a holder that dies without unlocking frees it.
func TestHostLockFreedWhenHolderDies(t *testing.T) {
	pf := testPreflight(t)
	// flock(1) holds the lock while its child runs; -o keeps it out of
	// the child, so killing flock alone is the holder dying.
	cmd := exec.Command("flock", "-o", pf.lock.lock, "sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("flock(1) (util-linux): %v", err)
	}
	defer func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() }()
	if err := waitUntil(context.Background(), 30*time.Second, func() bool { held, _ := pf.lock.held(); return held }); err != nil {
		cmd.Process.Kill()
		t.Fatalf("lock not seen as held: %v", err)
	}
	cmd.Process.Kill() // SIGKILL: no unlock
	if err := waitUntil(context.Background(), 30*time.Second, func() bool { held, _ := pf.lock.held(); return !held }); err != nil {
		t.Fatalf("lock still held after its holder died: %v", err)
	}
}

// A process of a dead demo (its command line names the demo directory, as
// the demo's containerd, etcd and agent do) is killed, not refused.
func TestPreflightKillsLeftoverProcess(t *testing.T) {
	pf := testPreflight(t)
	cmd := exec.Command("sh", "-c", "sleep 600", filepath.Join(pf.dir, "containerd", "config.toml"))
	// The sleep is sh's child and outlives sh's SIGKILL: its group goes at
	// the end, so nothing of the test lingers (or holds fds it inherited).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	if err := pf.check(); err != nil {
		t.Fatalf("refused: %v", err)
	}
	select {
	case err := <-exited:
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Errorf("leftover ended with %v, want killed by SIGKILL", err)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the leftover process is still running")
	}
}

// A bridge left by a dead demo is deleted (the CI failure of stop 13: a
// killed run left evelet-demo0 and the next `make test` refused to start).
func TestPreflightDeletesLeftoverBridge(t *testing.T) {
	pf := testPreflight(t)
	links := map[string]bool{bridgeName: true, "eth0": true}
	pf.linkExists = func(name string) bool { return links[name] }
	pf.linkDel = func(name string) error { delete(links, name); return nil }
	if err := pf.check(); err != nil {
		t.Fatalf("refused: %v", err)
	}
	if links[bridgeName] || !links["eth0"] {
		t.Errorf("links after preflight: %v, want only eth0", links)
	}
}

// A leftover that cannot be removed is a refusal, not a silent start.
func TestPreflightRefusesWhenLeftoverStays(t *testing.T) {
	pf := testPreflight(t)
	pf.linkExists = func(name string) bool { return name == bridgeName }
	wantRefusal(t, pf.check(), bridgeName, "no link")
}

// The demo's cgroup root is cleared when no demo runs.
func TestPreflightClearsCgroups(t *testing.T) {
	pf := testPreflight(t)
	cleared := false
	pf.clearCgroups = func() error { cleared = true; return nil }
	if err := pf.check(); err != nil {
		t.Fatalf("refused: %v", err)
	}
	if !cleared {
		t.Error("the demo cgroup root was not cleared")
	}
}

func TestStepLine(t *testing.T) {
	if got := stepLine(t0.Add(83*1e9), "building evelet"); got != "[  1:23] building evelet" {
		t.Errorf("got %q", got)
	}
}
