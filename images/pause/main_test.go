package main

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lf-edge/evelet/internal/syncbuf"
)

// TestMain lets the test binary act as the pause program itself, so that the
// signal tests exercise main() without a separate build.
func TestMain(m *testing.M) {
	if os.Getenv("EVELET_PAUSE_AS_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func startPause(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "EVELET_PAUSE_AS_MAIN=1")
	stderr := &syncbuf.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// Wait until the signal handlers are installed: the warning is printed
	// right after signal.Notify.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), "not running as PID 1") {
		if time.Now().After(deadline) {
			t.Fatalf("pause did not start; stderr: %q", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cmd
}

func TestExitsZeroOnSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := startPause(t)
			// SIGCHLD without children must not stop it.
			if err := cmd.Process.Signal(syscall.SIGCHLD); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("pause exited with %v, want status 0", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("pause did not exit on %v", sig)
			}
		})
	}
}

func TestReapAll(t *testing.T) {
	// Children of this test process that exit without being waited for are
	// zombies until reapAll collects them.
	var pids []int
	for i := 0; i < 3; i++ {
		pid, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", "exit 0"}, &syscall.ProcAttr{})
		if err != nil {
			t.Skipf("cannot start /bin/sh: %v", err)
		}
		pids = append(pids, pid)
	}
	deadline := time.Now().Add(10 * time.Second)
	reaped := 0
	for reaped < len(pids) && time.Now().Before(deadline) {
		reaped += reapAll()
		time.Sleep(10 * time.Millisecond)
	}
	if reaped < len(pids) {
		t.Fatalf("reaped %d children, want %d", reaped, len(pids))
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
			t.Errorf("child %d still exists after reaping (kill 0: %v)", pid, err)
		}
	}
}
