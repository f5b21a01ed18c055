package kubeletshim

import (
	"context"
	"os/exec"
	"testing"
	"time"
)

func TestSupervisorRestartsWithBackoff(t *testing.T) {
	s := &Supervisor{
		Command:    func() *exec.Cmd { return exec.Command("/bin/sh", "-c", "exit 3") },
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 80 * time.Millisecond,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	s.Run(ctx)
	// 20+40+80+80+... ms of back-off in 600 ms: a handful of restarts, not hundreds.
	if r := s.Restarts(); r < 3 || r > 12 {
		t.Fatalf("restarts = %d, want back-off between 3 and 12", r)
	}
}

func TestSupervisorStopsChildOnCancel(t *testing.T) {
	s := &Supervisor{Command: func() *exec.Cmd { return exec.Command("sleep", "100") }, StopGrace: 2 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for s.PID() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s.PID() == 0 {
		t.Fatal("child never started")
	}
	start := time.Now()
	cancel()
	<-done
	if time.Since(start) > time.Second {
		t.Fatalf("stop took %v; SIGTERM should end sleep at once", time.Since(start))
	}
	if s.PID() != 0 || s.Restarts() != 0 {
		t.Fatalf("pid=%d restarts=%d after stop", s.PID(), s.Restarts())
	}
}
