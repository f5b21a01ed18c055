package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// testPreflight checks a fresh directory with no bridge, no cgroup and the
// given ports.
func testPreflight(t *testing.T, ports ...port) preflight {
	return preflight{
		dir: t.TempDir(), ports: ports, bridge: bridgeName,
		cgroupDirs: func() []string { return nil },
		linkExists: func(string) bool { return false },
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

func TestPreflightRefusesRunningDemo(t *testing.T) {
	pf := testPreflight(t)
	writeState(pf.dir, state{PID: os.Getpid()}) // a live pid
	wantRefusal(t, pf.check(), "already running", "pid "+strconv.Itoa(os.Getpid()))
}

func TestPreflightRefusesLeftoverProcess(t *testing.T) {
	pf := testPreflight(t)
	// A process whose command line names a path under the demo directory,
	// as the demo's containerd, etcd and agent do.
	cmd := exec.Command("sh", "-c", "sleep 60", filepath.Join(pf.dir, "containerd", "config.toml"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	wantRefusal(t, pf.check(), "still running", strconv.Itoa(cmd.Process.Pid))
}

func TestPreflightRefusesExistingBridge(t *testing.T) {
	pf := testPreflight(t)
	pf.linkExists = func(name string) bool { return name == bridgeName }
	wantRefusal(t, pf.check(), bridgeName)
}

func TestPreflightRefusesBusyCgroup(t *testing.T) {
	pf := testPreflight(t)
	cg := filepath.Join(t.TempDir(), "evelet-demo")
	pod := filepath.Join(cg, "kubepods", "besteffort", "pod1")
	if err := os.MkdirAll(pod, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(cg, "cgroup.procs"), nil, 0o644)
	os.WriteFile(filepath.Join(pod, "cgroup.procs"), []byte("4242\n4243\n"), 0o644)
	pf.cgroupDirs = func() []string { return []string{cg} }
	wantRefusal(t, pf.check(), "2 processes", cg)
}

func TestStepLine(t *testing.T) {
	if got := stepLine(t0.Add(83*1e9), "building evelet"); got != "[  1:23] building evelet" {
		t.Errorf("got %q", got)
	}
}
