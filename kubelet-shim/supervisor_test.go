package kubeletshim

import (
	"context"
	"errors"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestSupervisorRestartsWithBackoff records when each child starts and
// checks the gaps: each is at least the back-off due (so the delay doubles
// from MinBackoff), and the whole run is far shorter than uncapped doubling
// would take (so MaxBackoff caps it). A loaded machine only lengthens gaps,
// which the lower bounds allow; the upper bound leaves seconds of slack.
func TestSupervisorRestartsWithBackoff(t *testing.T) {
	const starts = 10
	var mu sync.Mutex
	var at []time.Time
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := &Supervisor{
		Command: func() *exec.Cmd {
			mu.Lock()
			defer mu.Unlock()
			at = append(at, time.Now())
			if len(at) == starts {
				cancel()
			}
			return exec.Command("/bin/sh", "-c", "exit 3")
		},
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
	}
	s.Run(ctx)
	mu.Lock()
	defer mu.Unlock()
	if len(at) < starts {
		t.Fatalf("%d starts before the 2-minute deadline, want %d", len(at), starts)
	}
	due := s.MinBackoff
	for i := 1; i < len(at); i++ {
		if gap := at[i].Sub(at[i-1]); gap < due {
			t.Errorf("start %d came %v after the previous one, want at least the back-off %v", i, gap, due)
		}
		due = min(due*2, s.MaxBackoff)
	}
	// Uncapped doubling from 5 ms over 9 restarts is 5*(2^9-1) ms = 2.5 s.
	if total := at[len(at)-1].Sub(at[0]); total >= 2555*time.Millisecond {
		t.Errorf("%d restarts took %v: the back-off is not capped at %v", starts-1, total, s.MaxBackoff)
	}
	if r := s.Restarts(); r != starts-1 {
		t.Errorf("Restarts() = %d, want %d", r, starts-1)
	}
}

// TestSupervisorStopsChildOnCancel: on cancel the child gets SIGTERM and is
// gone when Run returns. StopGrace is longer than the test's deadline, so a
// child that were only killed after the grace period fails the test instead
// of passing slowly.
func TestSupervisorStopsChildOnCancel(t *testing.T) {
	started := make(chan struct{}, 1)
	s := &Supervisor{
		Command: func() *exec.Cmd {
			select {
			case started <- struct{}{}:
			default:
			}
			return exec.Command("sleep", "1000")
		},
		StopGrace: time.Hour,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	var pid int
	deadline := time.After(time.Minute)
	for pid == 0 {
		select {
		case <-deadline:
			cancel()
			t.Fatal("child never started")
		case <-time.After(10 * time.Millisecond):
			pid = s.PID()
		}
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("child pid %d not alive before cancel: %v", pid, err)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Run did not return a minute after cancel: SIGTERM was not sent (StopGrace is an hour)")
	}
	// Run reaped the child: the pid is gone.
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("child %d after Run returned: kill(0) = %v, want ESRCH", pid, err)
	}
	if s.PID() != 0 || s.Restarts() != 0 {
		t.Fatalf("pid=%d restarts=%d after stop", s.PID(), s.Restarts())
	}
}
