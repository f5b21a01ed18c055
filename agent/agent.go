// Package agent is evelet's supervisor: it takes join intent from a Source,
// turns it into credentials (bootstrap), and runs the CRI shim and the
// kubelet, restarting them when they fail.
package agent

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sync"
	"time"

	"github.com/lf-edge/evelet/agent/intent"

	"github.com/lf-edge/evelet/bootstrap"
	"github.com/lf-edge/evelet/cri"
	"github.com/lf-edge/evelet/cri/containerd"
	"github.com/lf-edge/evelet/cri/policy"
	kubeletshim "github.com/lf-edge/evelet/kubelet-shim"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
)

// Config is the agent's wiring; cmd/evelet fills it from flags.
type Config struct {
	// StateDir survives reboots (/persist/evelet); RunDir does not (/run/evelet).
	StateDir, RunDir string
	// ContainerdEndpoint is EVE's user containerd CRI endpoint.
	ContainerdEndpoint string
	Source             intent.Source
	// Self is the evelet binary the kubelet child is started from.
	Self string
	// KubeletLog receives the kubelet's stdout/stderr.
	KubeletLog                      io.Writer
	KubeletPort, KubeletHealthzPort int32
	CgroupDriver                    string
	Log                             *logrus.Entry
	// RetryMin/RetryMax bound the back-off while the apiserver is unreachable.
	RetryMin, RetryMax time.Duration
	// DrainTimeout bounds the drain when the device leaves a cluster.
	DrainTimeout time.Duration
	// Metrics receives the CRI metrics; nil: none.
	Metrics prometheus.Registerer
}

// CRISocket is where the kubelet finds evelet's CRI server.
func (c *Config) CRISocket() string { return filepath.Join(c.RunDir, "cri.sock") }

// Credentials is the credential store under the state root.
func (c *Config) Credentials() bootstrap.Store {
	return bootstrap.Store{Dir: filepath.Join(c.StateDir, "credentials")}
}

// Agent runs one device's node.
type Agent struct {
	cfg Config
	log *logrus.Entry

	writeMu sync.Mutex
	written *Status // last status written to status.json

	mu     sync.Mutex
	status Status
	sup    *kubeletshim.Supervisor
	cri    *cri.Server
	items  map[string]string // the owner's "evelet." config items
}

func New(cfg Config) *Agent {
	if cfg.Log == nil {
		cfg.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	if cfg.RetryMin == 0 {
		cfg.RetryMin = time.Second
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = 30 * time.Second
	}
	if cfg.KubeletLog == nil {
		cfg.KubeletLog = os.Stderr
	}
	return &Agent{cfg: cfg, log: cfg.Log, status: Status{Phase: PhaseStarting, Source: cfg.Source.Name()}}
}

// Run serves until ctx ends, then stops the kubelet and the CRI server.
// Pods keep running in the backends.
func (a *Agent) Run(ctx context.Context) error {
	for _, d := range []string{a.cfg.StateDir, a.cfg.RunDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	a.publish(func(s *Status) {})

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a.runCRI(ctx) }()

	var (
		current  *intent.Join
		stopJoin context.CancelFunc = func() {}
		joinDone                    = make(chan struct{})
		tick                        = time.NewTicker(2 * time.Second)
		updates                     = a.cfg.Source.Watch(ctx)
		srcErr   string             // last refused intent, cleared by a good one
	)
	close(joinDone)
	defer tick.Stop()
	stop := func() { stopJoin(); <-joinDone }
	for {
		select {
		case <-ctx.Done():
			stop()
			wg.Wait()
			return nil
		case <-tick.C:
			a.refresh()
		case u, ok := <-updates:
			if !ok {
				stop()
				wg.Wait()
				return ctx.Err()
			}
			if u.Err != nil {
				// Keep whatever runs now: bad input must not take a
				// working node down.
				a.fail(u.Err, "join intent refused; keeping the current state")
				srcErr = u.Err.Error()
				continue
			}
			a.setConfigItems(u.ConfigItems)
			if srcErr != "" {
				a.clearSourceError(srcErr)
				srcErr = ""
			}
			// Leaving a cluster (intent removed, or a different cluster)
			// drains while the kubelet still runs, so pods end gracefully.
			// Checked first: an agent restarted after its cluster was
			// removed has no current intent but still holds credentials.
			if a.mustLeave(u.Join) {
				a.leave(ctx, stop)
			}
			if reflect.DeepEqual(u.Join, current) {
				if current == nil {
					a.publish(func(s *Status) {
						if s.Phase == PhaseStarting {
							s.Phase = PhaseNoJoin
						}
					})
				}
				continue
			}
			stop()
			current = u.Join
			if current == nil {
				a.publish(func(s *Status) {
					if s.Phase != PhaseLeft {
						*s = Status{Phase: PhaseNoJoin, Source: s.Source}
					}
				})
				continue
			}
			stopJoin, joinDone = a.startJoin(ctx, current)
		}
	}
}

func (a *Agent) startJoin(ctx context.Context, j *intent.Join) (context.CancelFunc, chan struct{}) {
	jctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); a.join(jctx, j) }()
	return cancel, done
}

// join prepares credentials (retrying while the apiserver is unreachable)
// and then keeps the kubelet running until ctx ends.
func (a *Agent) join(ctx context.Context, j *intent.Join) {
	server := j.Material.Server()
	log := a.log.WithFields(logrus.Fields{"node": j.NodeName, "apiserver": server})
	a.publish(func(s *Status) {
		s.Phase, s.NodeName, s.DeviceUUID, s.APIServer = PhaseJoining, j.NodeName, j.DeviceUUID, server
	})
	store := a.cfg.Credentials()
	backoff := a.cfg.RetryMin
	var outcome bootstrap.Outcome
	for {
		var err error
		outcome, err = store.Prepare(ctx, &j.Material, time.Now())
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		if bootstrap.IsPermanent(err) {
			a.fail(err, "join refused; waiting for new join intent")
			return
		}
		log.WithError(err).WithField("retry_in", backoff).Warn("apiserver not reachable yet")
		a.publish(func(s *Status) { s.LastError, s.LastErrorTime = err.Error(), ptrNow() })
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff = min(backoff*2, a.cfg.RetryMax)
	}
	log.WithField("credentials", outcome).Info("credentials ready")
	if err := store.SetNodeName(j.NodeName); err != nil {
		log.WithError(err).Warn("join record not updated")
	}

	opts := &kubeletshim.Options{
		NodeName: j.NodeName, DeviceUUID: j.DeviceUUID, OSVersion: j.OSVersion, NodeIP: j.NodeIP,
		StateDir: a.cfg.StateDir, CredentialsDir: store.Dir,
		CRIEndpoint:  "unix://" + a.cfg.CRISocket(),
		CgroupDriver: a.cfg.CgroupDriver, CgroupV1: kubeletshim.HostCgroupV1(),
		Port: a.cfg.KubeletPort, HealthzPort: a.cfg.KubeletHealthzPort,
	}
	if err := opts.WriteConfig(); err != nil {
		a.fail(&bootstrap.PermanentError{Err: err}, "kubelet configuration refused")
		return
	}
	sup := &kubeletshim.Supervisor{
		Log: log.WithField("component", "kubelet"),
		Command: func() *exec.Cmd {
			cmd := exec.Command(a.cfg.Self, append([]string{"kubelet"}, opts.Args()...)...)
			cmd.Stdout, cmd.Stderr = a.cfg.KubeletLog, a.cfg.KubeletLog
			return cmd
		},
	}
	a.mu.Lock()
	a.sup = sup
	a.mu.Unlock()
	a.publish(func(s *Status) {
		s.Phase, s.Credentials, s.LastError, s.LastErrorTime = PhaseRunning, string(outcome), "", nil
	})
	sup.Run(ctx)
	a.mu.Lock()
	a.sup = nil
	a.mu.Unlock()
}

// runCRI keeps evelet's CRI server up; it outlives kubelet restarts.
func (a *Agent) runCRI(ctx context.Context) {
	log := a.log.WithField("component", "cri")
	backoff := a.cfg.RetryMin
	for ctx.Err() == nil {
		be, err := containerd.Dial(ctx, a.cfg.ContainerdEndpoint)
		if err == nil {
			var srv *cri.Server
			if srv, err = cri.NewServer(cri.Config{Socket: a.cfg.CRISocket(), Backend: be, Log: log, Metrics: a.cfg.Metrics}); err == nil {
				// Publish srv before computing the policy, so config items
				// that arrive meanwhile reach it through setConfigItems.
				// Nothing is served before Serve.
				a.mu.Lock()
				a.cri = srv
				a.mu.Unlock()
				srv.SetPolicy(a.policy())
				log.WithField("socket", a.cfg.CRISocket()).Info("CRI server listening")
				backoff = a.cfg.RetryMin
				err = srv.Serve(ctx)
				a.mu.Lock()
				a.cri = nil
				a.mu.Unlock()
			}
			be.Close()
		}
		if ctx.Err() != nil {
			return
		}
		log.WithError(err).WithField("retry_in", backoff).Error("CRI server not serving")
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff = min(backoff*2, a.cfg.RetryMax)
	}
}

// policy is the guardrail policy: production defaults, with the kubelet's
// own directories under this agent's state root.
func (a *Agent) policy() policy.Policy {
	a.mu.Lock()
	items := a.items
	a.mu.Unlock()
	p, errs := policy.FromConfigItems(items)
	for _, err := range errs {
		a.log.WithError(err).Error("guardrail config item ignored")
	}
	dirs := kubeletshim.Options{StateDir: a.cfg.StateDir}
	p.KubeletRootDir, p.PodLogsDir = dirs.RootDir(), dirs.PodLogsDir()
	// No pod's hostPort may take the kubelet's own ports.
	for _, port := range []int32{a.cfg.KubeletPort, a.cfg.KubeletHealthzPort} {
		if port != 0 {
			p.DevicePorts = append(p.DevicePorts, int(port))
		}
	}
	return p
}

// setConfigItems applies the owner's config items; the CRI server enforces
// the new guardrail policy from its next call on.
func (a *Agent) setConfigItems(items map[string]string) {
	a.mu.Lock()
	if reflect.DeepEqual(items, a.items) {
		a.mu.Unlock()
		return
	}
	a.items = items
	srv := a.cri
	a.mu.Unlock()
	p := a.policy()
	if srv != nil {
		srv.SetPolicy(p)
	}
	a.log.WithField("items", items).Info("device owner's evelet config items applied")
}

func (a *Agent) fail(err error, msg string) {
	a.log.WithError(err).Error(msg)
	a.publish(func(s *Status) {
		if s.Phase != PhaseRunning {
			s.Phase = PhaseFailed
		}
		s.LastError, s.LastErrorTime = err.Error(), ptrNow()
	})
}

// refresh folds the kubelet's process and credential state into Status.
func (a *Agent) refresh() {
	a.mu.Lock()
	sup := a.sup
	a.mu.Unlock()
	c, ok, _ := a.cfg.Credentials().ClientCredentials(time.Now())
	a.publish(func(s *Status) {
		s.KubeletPID, s.KubeletRestarts, s.ClientCertExpiry = 0, 0, nil
		if sup != nil {
			s.KubeletPID, s.KubeletRestarts = sup.PID(), sup.Restarts()
		}
		if ok {
			t := c.NotAfter.UTC()
			s.ClientCertExpiry = &t
		}
	})
}

// publish applies change and writes status.json if the status differs from
// what was last written: the 2 s refresh must not rewrite an unchanged file.
func (a *Agent) publish(change func(*Status)) {
	// writeMu first, so writes happen in the order of the changes.
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	a.mu.Lock()
	change(&a.status)
	s := a.status
	a.mu.Unlock()
	if a.written != nil && reflect.DeepEqual(*a.written, s) {
		return
	}
	if err := writeStatus(a.cfg.RunDir, s); err != nil {
		a.log.WithError(err).Warn("status not written")
		return
	}
	a.written = &s
}

// Status returns a copy of the current status.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status
}

// clearSourceError forgets a refused intent once the Source delivers a
// good one again (the failure was about the intent, not the cluster).
func (a *Agent) clearSourceError(msg string) {
	a.publish(func(s *Status) {
		if s.LastError != msg {
			return
		}
		s.LastError, s.LastErrorTime = "", nil
		if s.Phase == PhaseFailed {
			s.Phase = PhaseNoJoin
			if s.KubeletPID != 0 || a.sup != nil {
				s.Phase = PhaseRunning
			}
		}
	})
}

func ptrNow() *time.Time { t := time.Now().UTC(); return &t }
