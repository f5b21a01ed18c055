// Package agent is evelet's supervisor: it takes join intent from a Source,
// turns it into credentials (bootstrap), and runs the CRI shim and the
// kubelet, restarting them when they fail.
package agent

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lf-edge/evelet/agent/upgrade"
	"github.com/lf-edge/evelet/bootstrap"
	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/cni/eveni"
	"github.com/lf-edge/evelet/cni/podnet"
	"github.com/lf-edge/evelet/cri"
	"github.com/lf-edge/evelet/cri/containerd"
	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/internal/backoff"
	"github.com/lf-edge/evelet/internal/layout"
	kubeletshim "github.com/lf-edge/evelet/kubelet-shim"
	"github.com/lf-edge/evelet/kubeproxy"
	"github.com/lf-edge/evelet/policy"
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
	// RetryMin/RetryMax bound the back-off while the apiserver is unreachable
	// (and between CRI server and Source restarts).
	RetryMin, RetryMax time.Duration
	// DrainTimeout bounds the drain when the device leaves a cluster.
	DrainTimeout time.Duration
	// Metrics receives the CRI metrics; nil: none.
	Metrics prometheus.Registerer
	// Discovery tunes token discovery (zero: kubeadm-like defaults).
	Discovery bootstrap.DiscoveryOptions
	// KubeletCgroupRoot is the kubelet's cgroupRoot ("": "/").
	KubeletCgroupRoot string
	// VM configures VM pods (vmbackend.go).
	VM VMConfig
	// CNI turns on multi-network pods (agent/cni.go); zero: off.
	CNI CNIOptions
	// EVERoot is EVE's pubsub root: the network instances pods may attach
	// to (agent/eveni.go, agent/nilabels.go) and, with CoordinateOSUpdates,
	// EVE's OS-update topics. Unset: the device's for the eve-ni plugin,
	// and no node labels.
	EVERoot pubsub.Root
	// KubeProxy runs Services on the device (agent/kubeproxy.go).
	KubeProxy KubeProxyConfig
	// CoordinateOSUpdates runs the upgrade coordinator (upgrade_hook.go) on
	// EVERoot; set when the join source is the EVE channel.
	CoordinateOSUpdates bool
	// NodeDNS configures the node-local DNS server (agent/nodedns.go).
	NodeDNS NodeDNSOptions
	// DRA configures the DRA driver for the owner's devices (agent/dra.go).
	DRA DRAConfig
}

// PolicyFile is the guardrail policy for the kubelet's hostPath guard.
func (c *Config) PolicyFile() string { return layout.Run{Dir: c.RunDir}.KubeletPolicy() }

// CRISocket is where the kubelet finds evelet's CRI server.
func (c *Config) CRISocket() string { return layout.Run{Dir: c.RunDir}.CRISocket() }

// Credentials is the credential store under the state root.
func (c *Config) Credentials() bootstrap.Store {
	return bootstrap.Store{Dir: layout.State{Dir: c.StateDir}.Credentials().Dir, Discovery: c.Discovery}
}

// credStore is what the agent needs of bootstrap.Store (a fake in tests).
type credStore interface {
	Prepare(ctx context.Context, m *bootstrap.Material, now time.Time) (bootstrap.Outcome, error)
	Holds(m *bootstrap.Material) (bool, error)
	Record() (*bootstrap.JoinRecord, error)
	SetNodeName(name string) error
	ClientCredentials(now time.Time) (bootstrap.Client, bool, error)
	KubeconfigPath() string
	Wipe() error
}

// kubeletProc is a running kubelet (kubeletshim.Supervisor; a fake in tests).
type kubeletProc interface {
	Run(ctx context.Context) error
	PID() int
	Restarts() int
}

const (
	// heartbeatEvery is how often status.json is rewritten even when
	// nothing changed, so a dead agent shows (see Status.Liveness).
	heartbeatEvery = 10 * time.Second
	// criStableAfter: a CRI server that served this long resets its back-off.
	criStableAfter = time.Minute
)

// Agent runs one device's node.
type Agent struct {
	cfg Config
	log *logrus.Entry

	// Seams, set by New; tests replace them with fakes.
	store      credStore
	newKubelet func(j *intent.Join) (kubeletProc, error)
	serveCRI   func(ctx context.Context) error
	// removeNodeRules removes the host rules evelet's pod networks made
	// once the node has left (eve-ni's table); a no-op in unit tests,
	// which share the host's ruleset with the CNI packages' tests.
	removeNodeRules func() error
	// podnetNFT reaches nftables for the pod network's masquerade
	// (podnet.go); nil: nft(8) in the agent's network namespace.
	podnetNFT podnet.NFT
	// podnetRoutes reach the kernel's routes for host-gw (podnet.go);
	// nil: netlink in the agent's network namespace.
	podnetRoutes *hostGWOps
	// kubeProxyRan: kube-proxy was started since the last leave, so its
	// rules go at the next one even if the owner turned it off meanwhile.
	kubeProxyRan atomic.Bool
	sleep        func(ctx context.Context, d time.Duration) bool
	heartbeat    time.Duration

	writeMu sync.Mutex
	written *Status // last status written to status.json

	policyFileMu sync.Mutex // orders writes of the kubelet's policy file
	pushMu       sync.Mutex // orders policy installs on the CRI server (pushPolicy)

	mu     sync.Mutex
	status Status
	sup    kubeletProc
	cri    policySetter      // the CRI server being served, nil between (re)starts
	items  map[string]string // the owner's "evelet." config items
	// runtimeDirs are the directories containerd says it uses
	// (runtimedirs.go), protected by the policy.
	runtimeDirs []policy.NamedDir
	addr        nodeAddr // the node IP the kubelet runs with (nodeaddr.go)

	dnsAddr  string               // the kubelet's clusterDNS (agent/nodedns.go)
	niKick   chan struct{}        // the owner's NI list changed (agent/nilabels.go)
	upgrader *upgrade.Coordinator // running while the node has credentials (EVE channel)
	apiCache apiCacheState        // the local API cache in front of the apiserver (apicache.go)
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
	a := &Agent{cfg: cfg, log: cfg.Log, status: Status{Phase: PhaseStarting, Source: cfg.Source.Name(), AgentPID: os.Getpid()},
		sleep: backoff.Sleep, heartbeat: heartbeatEvery, niKick: make(chan struct{}, 1)}
	store := cfg.Credentials()
	onRetry := store.Discovery.OnRetry
	store.Discovery.OnRetry = func(err error) {
		// Discovery retries for minutes; show why while it does.
		a.publish(func(s *Status) { s.LastError, s.LastErrorTime = err.Error(), ptrNow() })
		if onRetry != nil {
			onRetry(err)
		}
	}
	a.store = store
	a.newKubelet = a.kubelet
	a.serveCRI = a.serveCRIOnce
	a.removeNodeRules = eveni.RemoveGuardTableIfEmpty
	return a
}

// joinJob is the goroutine that joins one intent and then runs its kubelet.
type joinJob struct {
	join   *intent.Join
	cancel context.CancelFunc
	done   chan struct{}
	ready  atomic.Bool // credentials in place; the kubelet runs
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

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a.runCRI(ctx) }()
	a.writeEveNISettings()
	wg.Add(1)
	go func() { defer wg.Done(); a.runDHCPDaemon(ctx) }()
	if a.cfg.EVERoot.Run != "" {
		wg.Add(1)
		go func() { defer wg.Done(); a.runNILabels(ctx) }()
	}

	var (
		current *intent.Join
		job     *joinJob
		tick    = time.NewTicker(2 * time.Second)
		updates = a.cfg.Source.Watch(ctx)
		rewatch <-chan time.Time
		srcWait = backoff.Backoff{Min: a.cfg.RetryMin, Max: a.cfg.RetryMax}
		srcErr  string // last refused intent, cleared by a good one
	)
	stop := func() {
		if job != nil {
			job.cancel()
			<-job.done
			job = nil
		}
	}
	defer func() {
		tick.Stop()
		stop()
		cancel()
		wg.Wait()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			a.refresh()
			if job != nil && job.ready.Load() {
				if ip, moved := a.nodeIPMoved(); moved {
					// The device's address changed: only the kubelet
					// restarts, with the new one (nodeaddr.go).
					a.log.WithField("node_ip", ip).Info("the device's address changed; restarting the kubelet on the new one")
					stop()
					job = a.startJoin(ctx, current)
				}
			}
		case <-rewatch:
			rewatch, updates = nil, a.cfg.Source.Watch(ctx)
		case u, ok := <-updates:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				// A Source closes only when ctx ends; one that gave up is
				// watched again. The node keeps running meanwhile.
				d := srcWait.Next()
				a.log.WithField("retry_in", d).Error("join source stopped; keeping the current state")
				a.publish(func(s *Status) {
					s.LastError, s.LastErrorTime = fmt.Sprintf("join source %s stopped; watching it again", a.cfg.Source.Name()), ptrNow()
				})
				updates, rewatch = nil, time.After(d)
				continue
			}
			srcWait.Reset()
			if u.Err != nil {
				// The owner's items come on their own path and apply
				// anyway: a join that does not resolve must not freeze
				// the guardrails at an older, possibly laxer, policy.
				if u.ConfigItems != nil {
					a.setConfigItems(u.ConfigItems)
				}
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
			// Leaving a cluster (intent removed, or a different cluster:
			// another apiserver or another CA) drains while the kubelet
			// still runs, so pods end gracefully. Checked first: an agent
			// restarted after its cluster was removed has no current intent
			// but still holds credentials.
			if a.mustLeave(u.Join) {
				a.leave(ctx, stop)
				current = nil
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
			if job != nil && job.ready.Load() && u.Join != nil && sameExceptToken(current, u.Join) {
				// A new bootstrap token for the cluster the kubelet is in:
				// it keeps its client certificate; the token is only used
				// if the device must bootstrap again.
				a.log.WithField("node", u.Join.NodeName).Info("new bootstrap token for the same cluster; the kubelet keeps running")
				if err := a.setupCNI(u.Join); err != nil {
					a.log.WithError(err).Error("pod networking (evelet-cni) not updated")
				}
				current = u.Join
				continue
			}
			stop()
			current = u.Join
			if current == nil {
				a.publish(func(s *Status) {
					if s.Phase != PhaseLeft {
						*s = Status{Phase: PhaseNoJoin, Source: s.Source, AgentPID: s.AgentPID, ConfigErrors: s.ConfigErrors}
					}
				})
				continue
			}
			job = a.startJoin(ctx, current)
		}
	}
}

// sameExceptToken: the intents differ at most in the bootstrap token.
func sameExceptToken(a, b *intent.Join) bool {
	if a == nil || b == nil {
		return false
	}
	x, y := *a, *b
	x.Token, y.Token = "", ""
	x.NetworkToken, y.NetworkToken = "", ""
	return reflect.DeepEqual(x, y)
}

func (a *Agent) startJoin(ctx context.Context, j *intent.Join) *joinJob {
	jctx, cancel := context.WithCancel(ctx)
	job := &joinJob{join: j, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(job.done); a.join(jctx, job) }()
	return job
}

// join prepares credentials (retrying while the apiserver is unreachable)
// and then keeps the kubelet running until ctx ends.
func (a *Agent) join(ctx context.Context, job *joinJob) {
	j := job.join
	server := j.Material.Server()
	log := a.log.WithFields(logrus.Fields{"node": j.NodeName, "apiserver": server})
	a.publish(func(s *Status) {
		s.Phase, s.NodeName, s.DeviceUUID, s.APIServer = PhaseJoining, j.NodeName, j.DeviceUUID, server
	})
	delay := backoff.Backoff{Min: a.cfg.RetryMin, Max: a.cfg.RetryMax}
	var outcome bootstrap.Outcome
	for {
		var err error
		outcome, err = a.store.Prepare(ctx, &j.Material, time.Now())
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
		wait := delay.Next()
		log.WithError(err).WithField("retry_in", wait).Warn("cluster not ready for this device yet")
		a.publish(func(s *Status) { s.LastError, s.LastErrorTime = err.Error(), ptrNow() })
		if !a.sleep(ctx, wait) {
			return
		}
	}
	log.WithField("credentials", outcome).Info("credentials ready")
	if err := a.store.SetNodeName(j.NodeName); err != nil {
		log.WithError(err).Warn("join record not updated")
	}
	if err := a.setupCNI(j); err != nil {
		a.fail(&bootstrap.PermanentError{Err: err}, "pod networking (evelet-cni) not set up")
		return
	}
	defer a.startNodeDNS(ctx, j)()
	k, err := a.newKubelet(j)
	if err != nil {
		a.fail(&bootstrap.PermanentError{Err: err}, "kubelet configuration refused")
		return
	}
	job.ready.Store(true)
	a.mu.Lock()
	a.sup = k
	a.mu.Unlock()
	a.publish(func(s *Status) {
		s.Phase, s.Credentials, s.LastError, s.LastErrorTime = PhaseRunning, string(outcome), "", nil
	})
	waitUpgrade := a.startUpgrade(ctx, j)
	waitProxy := a.startKubeProxy(ctx, j)
	waitPodNet := a.startPodNetwork(ctx, j)
	waitDRA := a.startDRA(ctx, j)
	k.Run(ctx)
	waitDRA()
	waitPodNet()
	waitProxy()
	waitUpgrade()
	a.mu.Lock()
	a.sup = nil
	a.mu.Unlock()
}

// kubelet writes the kubelet's configuration for j and returns its
// supervisor, not yet running.
func (a *Agent) kubelet(j *intent.Join) (kubeletProc, error) {
	opts := &kubeletshim.Options{
		NodeName: j.NodeName, DeviceUUID: j.DeviceUUID, OSVersion: j.OSVersion, NodeIP: j.NodeIP,
		ExtraLabels: a.vmLabels(),
		StateDir:    a.cfg.StateDir, CredentialsDir: a.cfg.Credentials().Dir,
		CRIEndpoint:  "unix://" + a.cfg.CRISocket(),
		CgroupDriver: a.cfg.CgroupDriver, CgroupV1: kubeletshim.HostCgroupV1(),
		Port: a.cfg.KubeletPort, HealthzPort: a.cfg.KubeletHealthzPort,
		CgroupRoot:  a.cfg.KubeletCgroupRoot,
		ConfigItems: a.configItems(), PolicyFile: a.cfg.PolicyFile(),
		ClusterDNS: a.clusterDNS(), ClusterDomain: a.cfg.NodeDNS.ClusterDomain,
	}
	// Refused items were logged when they arrived (publishConfigErrors).
	a.writePolicyFile()
	if err := opts.WriteConfig(); err != nil {
		return nil, err
	}
	a.followNodeIP(opts.NodeIP, j.NodeIP != "")
	return a.withAPICache(j, opts, &kubeletshim.Supervisor{
		Log: a.log.WithFields(logrus.Fields{"node": j.NodeName, "component": "kubelet"}),
		Command: func() *exec.Cmd {
			cmd := a.roleCommand("kubelet", opts.Args()...)
			cmd.Stdout, cmd.Stderr = a.cfg.KubeletLog, a.cfg.KubeletLog
			return cmd
		},
	}), nil
}

// runCRI keeps evelet's CRI server up; it outlives kubelet restarts. The
// back-off resets only after a server actually served for a while: one that
// fails right after it was built must not be restarted in a tight loop.
func (a *Agent) runCRI(ctx context.Context) {
	log := a.log.WithField("component", "cri")
	delay := backoff.Backoff{Min: a.cfg.RetryMin, Max: a.cfg.RetryMax, StableAfter: criStableAfter}
	for ctx.Err() == nil {
		started := time.Now()
		err := a.serveCRI(ctx)
		if ctx.Err() != nil {
			return
		}
		wait := delay.After(time.Since(started))
		log.WithError(err).WithField("retry_in", wait).Error("CRI server not serving")
		if !a.sleep(ctx, wait) {
			return
		}
	}
}

// serveCRIOnce dials containerd and serves the CRI socket until ctx ends or
// serving fails.
func (a *Agent) serveCRIOnce(ctx context.Context) error {
	log := a.log.WithField("component", "cri")
	be, err := containerd.Dial(ctx, a.cfg.ContainerdEndpoint)
	if err != nil {
		return err
	}
	defer be.Close()
	a.learnRuntimeDirs(ctx, be)
	handlers, closeVM := a.vmHandlers(be)
	defer closeVM()
	srv, err := cri.NewServer(cri.Config{Socket: a.cfg.CRISocket(), Backend: be, Handlers: handlers, Log: log, Metrics: a.cfg.Metrics,
		Pods: a.criPods(), ClaimsDir: a.cfg.cdiDir()})
	if err != nil {
		return err
	}
	// Nothing is served before Serve, and the policy is in place by then.
	defer a.registerCRI(srv)()
	gcCtx, stopGC := context.WithCancel(ctx)
	defer stopGC()
	go a.runCNIGC(gcCtx, srv)
	return srv.Serve(ctx)
}

// policySetter is what the agent needs of a CRI server (*cri.Server; a
// fake in tests).
type policySetter interface{ SetPolicy(policy.Policy) }

// registerCRI makes srv the server that policy changes reach and installs
// the current policy on it; the returned func unregisters it.
func (a *Agent) registerCRI(srv policySetter) (unregister func()) {
	a.mu.Lock()
	a.cri = srv
	a.mu.Unlock()
	a.pushPolicy()
	return func() {
		a.mu.Lock()
		if a.cri == srv {
			a.cri = nil
		}
		a.mu.Unlock()
	}
}

// pushPolicy installs the policy of the current config items on the
// current CRI server. Items and server are read, and the policy set, under
// pushMu: of a CRI (re)start and a config change racing, the later push
// reads the newer items, so an older policy is never installed after a
// newer one (before, serveCRIOnce computed the policy, setConfigItems then
// installed a newer one, and serveCRIOnce's older one landed last).
func (a *Agent) pushPolicy() {
	a.pushMu.Lock()
	defer a.pushMu.Unlock()
	a.mu.Lock()
	srv := a.cri
	a.mu.Unlock()
	if srv != nil {
		srv.SetPolicy(a.policy())
	}
}

// policy is the guardrail policy: production defaults, with the kubelet's
// own directories under this agent's state root.
func (a *Agent) policy() policy.Policy {
	a.mu.Lock()
	items := a.items
	a.mu.Unlock()
	// Refused items are logged and put in the status once per change, by
	// publishConfigErrors; here they just keep their defaults.
	p, _ := policy.FromConfigItems(items)
	dirs := layout.State{Dir: a.cfg.StateDir}
	p.KubeletRootDir, p.PodLogsDir = dirs.KubeletRoot(), dirs.PodLogs()
	// Every directory this device's components write or follow: no host
	// path may lie in or above one (policy/protected.go).
	p.ProtectedDirs = []string{a.cfg.StateDir, a.cfg.RunDir, a.cfg.CNI.BinDir, a.cfg.CNI.ConfDir, a.cfg.VM.CNIConfDir, a.cfg.cdiDir()}
	p.ProtectedDirs = append(p.ProtectedDirs, a.cfg.VM.CNIBinDirs...)
	p.RuntimeDirs = a.protectedRuntimeDirs()
	if sock := strings.TrimPrefix(a.cfg.ContainerdEndpoint, "unix://"); filepath.IsAbs(sock) {
		p.ProtectedDirs = append(p.ProtectedDirs, filepath.Dir(sock))
	}
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
	a.mu.Unlock()
	a.pushPolicy()
	a.writePolicyFile()
	a.writeEveNISettings()
	a.refreshCNIRules()
	a.setUpgradeItems(items)
	a.publishConfigErrors(items)
	a.log.WithField("items", items).Info("device owner's evelet config items applied")
}

// publishConfigErrors puts the owner's refused evelet.* config items into
// the status, so `evelet status` shows why a knob did not take effect (each
// refused item keeps its default: the tenant gets less, never more).
func (a *Agent) publishConfigErrors(items map[string]string) {
	var msgs []string
	_, errs := policy.FromConfigItems(items)
	errs = append(errs, (&kubeletshim.Options{ConfigItems: items}).ConfigItemErrors()...)
	errs = append(errs, upgradeItemErrors(items)...)
	_, podNetErrs := podnet.FromConfigItems(items)
	errs = append(errs, podNetErrs...)
	if _, err := kubeproxy.EnabledFromConfigItems(items, false); err != nil {
		errs = append(errs, err)
	}
	for _, err := range errs {
		a.log.WithError(err).Error("config item ignored; it keeps its default")
		msgs = append(msgs, err.Error())
	}
	sort.Strings(msgs)
	a.publish(func(s *Status) { s.ConfigErrors = msgs })
}

func (a *Agent) configItems() map[string]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.items
}

// writePolicyFile keeps the kubelet's copy of the policy current; the
// kubelet re-reads it on change (kubelet-shim.VolumeGuard). The policy is
// computed under writeMu, so concurrent writers cannot leave an older one.
func (a *Agent) writePolicyFile() {
	a.policyFileMu.Lock()
	defer a.policyFileMu.Unlock()
	if err := kubeletshim.WritePolicyFile(a.cfg.PolicyFile(), a.policy()); err != nil {
		a.log.WithError(err).Error("kubelet policy file not written; the kubelet allows no host path")
	}
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
	c, ok, _ := a.store.ClientCredentials(time.Now())
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
// what was last written, or the last write is older than the heartbeat
// interval: the 2 s refresh must not rewrite an unchanged file, but a dead
// agent must show.
func (a *Agent) publish(change func(*Status)) {
	// writeMu first, so writes happen in the order of the changes.
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	a.mu.Lock()
	change(&a.status)
	s := a.status
	a.mu.Unlock()
	now := time.Now().UTC()
	if a.written != nil {
		s.Updated, s.Heartbeat = a.written.Updated, a.written.Heartbeat
		changed := !reflect.DeepEqual(*a.written, s)
		if !changed && now.Sub(s.Heartbeat) < a.heartbeat {
			return
		}
		if changed {
			s.Updated = now
		}
	} else {
		s.Updated = now
	}
	s.Heartbeat = now
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
	a.mu.Lock()
	running := a.sup != nil
	a.mu.Unlock()
	a.publish(func(s *Status) {
		if s.LastError != msg {
			return
		}
		s.LastError, s.LastErrorTime = "", nil
		if s.Phase == PhaseFailed {
			s.Phase = PhaseNoJoin
			if s.KubeletPID != 0 || running {
				s.Phase = PhaseRunning
			}
		}
	})
}

func ptrNow() *time.Time { t := time.Now().UTC(); return &t }
