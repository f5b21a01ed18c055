package kubeletshim

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/lf-edge/evelet/internal/backoff"
	"github.com/sirupsen/logrus"
)

// Supervisor runs the kubelet as a child process and restarts it with
// exponential back-off when it exits; a kubelet crash or config change
// never takes the agent (or the pods) down with it.
type Supervisor struct {
	// Name is the child's name in log lines ("": "kubelet"); the agent
	// supervises other children (kube-proxy) with the same loop.
	Name string
	// Command builds the process to run; called for every (re)start.
	Command func() *exec.Cmd
	Log     *logrus.Entry
	// MinBackoff/MaxBackoff bound the delay between restarts; a run longer
	// than StableAfter resets it.
	MinBackoff, MaxBackoff, StableAfter time.Duration
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL.
	StopGrace time.Duration

	mu       sync.Mutex
	cmd      *exec.Cmd
	restarts int
}

// Restarts is how many times the child has been restarted.
func (s *Supervisor) Restarts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restarts
}

// PID of the running child, 0 if none.
func (s *Supervisor) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Run starts the child and keeps it running until ctx is cancelled, then
// stops it (SIGTERM, SIGKILL after StopGrace) and returns.
func (s *Supervisor) Run(ctx context.Context) error {
	s.defaults()
	// Linux delivers Pdeathsig when the *thread* that forked the child
	// exits, not the process; keep this goroutine on one thread for as long
	// as it owns children so the kubelet is not signalled early.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	delay := backoff.Backoff{Min: s.MinBackoff, Max: s.MaxBackoff, StableAfter: s.StableAfter}
	for first := true; ; first = false {
		if !first {
			s.mu.Lock()
			s.restarts++
			s.mu.Unlock()
		}
		cmd := s.Command()
		// The kubelet must not outlive a killed agent: a new agent starts a
		// new kubelet, and two would fight over the node.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
		started := time.Now()
		if err := cmd.Start(); err != nil {
			s.Log.WithError(err).Error(s.Name + " did not start")
		} else {
			s.mu.Lock()
			s.cmd = cmd
			s.mu.Unlock()
			s.Log.WithField("pid", cmd.Process.Pid).Info(s.Name + " started")
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				s.Log.WithError(err).WithField("ran", time.Since(started).Round(time.Millisecond)).Warn(s.Name + " exited")
			case <-ctx.Done():
				s.stop(cmd, done)
				return nil
			}
			s.mu.Lock()
			s.cmd = nil
			s.mu.Unlock()
		}
		wait := delay.After(time.Since(started))
		s.Log.WithField("in", wait).Info("restarting " + s.Name)
		if !backoff.Sleep(ctx, wait) {
			return nil
		}
	}
}

func (s *Supervisor) stop(cmd *exec.Cmd, done <-chan error) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(s.StopGrace):
		s.Log.Warn(s.Name + " ignored SIGTERM; killing it")
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	s.mu.Lock()
	s.cmd = nil
	s.mu.Unlock()
	s.Log.Info(s.Name + " stopped")
}

func (s *Supervisor) defaults() {
	if s.Name == "" {
		s.Name = "kubelet"
	}
	if s.MinBackoff == 0 {
		s.MinBackoff = time.Second
	}
	if s.MaxBackoff == 0 {
		s.MaxBackoff = 30 * time.Second
	}
	if s.StableAfter == 0 {
		s.StableAfter = time.Minute
	}
	if s.StopGrace == 0 {
		s.StopGrace = 20 * time.Second
	}
	if s.Log == nil {
		s.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	if s.Command == nil {
		s.Command = func() *exec.Cmd { return exec.Command(os.Args[0], "kubelet") }
	}
}
