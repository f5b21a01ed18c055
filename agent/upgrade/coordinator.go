// Package upgrade is the upgrade coordinator: when EVE is about to reboot
// the device (into another OS version, or just a reboot or shutdown) it
// cordons the node, drains it through the Eviction API and tells EVE how
// the drain goes (NodeDrainStatus, in zedkube's place); after the reboot it
// uncordons the node and says on the Node whether the OS changed.
//
// Only EVE starts a cycle: the inputs are EVE's pubsub topics
// (NodeDrainRequest from baseosmgr or zedagent; on builds that do not ask,
// BaseOsConfig activating another version, the other partition turning
// "updating", NodeAgentStatus.DeviceReboot). Nothing read from the cluster
// (labels, annotations, objects) starts, changes or stops a cycle; the
// cluster only receives what evelet writes. docs/os-updates.md is the
// user-facing description.
package upgrade

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/lf-edge/evelet/agent/drain"
	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/internal/atomicfile"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
)

// Publisher reports NodeDrainStatus to EVE (socketpub.DrainStatus). A Set
// that fails is tried again at the next step (socketpub.DrainStatus fails
// while the build flavour is unknown, and for good on EVE-k builds).
type Publisher interface {
	Set(pubsub.NodeDrainStatus) error
}

// Config wires a Coordinator.
type Config struct {
	// Client acts with the node's own credentials.
	Client kubernetes.Interface
	Node   string
	// EVE is where EVE's pubsub topics are.
	EVE pubsub.Root
	// StateFile survives reboots (layout.State.UpgradeState).
	StateFile string
	// BootMarker is a file under the run root (a tmpfs on EVE): missing
	// at start means the device rebooted since the last run.
	BootMarker string
	// Publisher reports to EVE; nil when zedkube owns the topic.
	Publisher Publisher
	Log       *logrus.Entry
	// Tick is how often the node is checked while waiting (default 2s).
	Tick time.Duration
	// CordonTries and CordonInterval bound the cordon (zedkube: 10, 5s).
	CordonTries    int
	CordonInterval time.Duration
	// Watch tunes the pubsub watcher (tests shorten the debounce).
	Watch pubsub.WatchOptions
}

// Coordinator runs cycles for one node.
type Coordinator struct {
	cfg  Config
	log  *logrus.Entry
	node nodeAPI

	saveMu sync.Mutex // orders state file writes
	stepMu sync.Mutex // one step at a time

	mu        sync.Mutex
	st        State
	items     map[string]string // the owner's config items (settings)
	snap      pubsub.Snapshot
	started   time.Time
	drain     *drainJob
	published *pubsub.NodeDrainStatus
	pubErr    string // last Set error, logged once
	// latched: the last status EVE got holds nodeagent's
	// WaitDrainInProgress (see latches).
	latched bool
}

type drainJob struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a Coordinator with the default settings.
func New(cfg Config) *Coordinator {
	if cfg.Log == nil {
		cfg.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	if cfg.Tick <= 0 {
		cfg.Tick = 2 * time.Second
	}
	if cfg.CordonTries <= 0 {
		cfg.CordonTries = 10
	}
	if cfg.CordonInterval <= 0 {
		cfg.CordonInterval = 5 * time.Second
	}
	c := &Coordinator{cfg: cfg, log: cfg.Log.WithFields(logrus.Fields{"component": "upgrade", "node": cfg.Node})}
	c.node = nodeAPI{c: c}
	return c
}

// SetConfigItems applies the owner's evelet.upgrade.* items from the next
// drain attempt on; refused ones are returned (they keep their default).
func (c *Coordinator) SetConfigItems(items map[string]string) []error {
	_, errs := SettingsFromConfigItems(items)
	c.mu.Lock()
	c.items = items
	c.mu.Unlock()
	return errs
}

// settings are the drain settings for this build (SettingsFor).
func (c *Coordinator) settings() Settings {
	asks := c.asks()
	c.mu.Lock()
	items := c.items
	c.mu.Unlock()
	s, _ := SettingsFor(items, asks)
	return s
}

// State returns a copy of the current state.
func (c *Coordinator) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

// Run follows EVE until ctx ends. A drain in progress stops with ctx; its
// state stays on disk and the next Run resumes it.
func (c *Coordinator) Run(ctx context.Context) error {
	st, err := loadState(c.cfg.StateFile)
	if err != nil {
		// Keep the damaged file for inspection; start from nothing.
		c.log.WithError(err).Error("upgrade state unreadable; starting idle")
		_ = os.Rename(c.cfg.StateFile, c.cfg.StateFile+".bad")
		st = State{}
	}
	if st.Node != "" && st.Node != c.cfg.Node {
		c.log.WithField("state_node", st.Node).Info("upgrade state of another node; discarded")
		st = State{}
	}
	st.Node = c.cfg.Node
	rebooted := false
	if _, err := os.Stat(c.cfg.BootMarker); errors.Is(err, fs.ErrNotExist) {
		rebooted = true
	}
	if err := atomicfile.WriteFile(c.cfg.BootMarker, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600); err != nil {
		return fmt.Errorf("upgrade: boot marker: %w", err)
	}
	if rebooted {
		// What EVE said before the reboot is gone with /run.
		st.SawDrainRequest = false
		if st.active() {
			c.log.WithFields(logrus.Fields{"from": st.FromVersion, "to": st.ToVersion, "phase": st.Phase}).Info("device rebooted during an OS update cycle; waiting for the node to be Ready")
			st.Phase = PhaseRebooted
		}
	}
	c.mu.Lock()
	c.st = st
	c.started = time.Now()
	// nodeagent's latch lives as long as nodeagent: a reboot cleared it,
	// an agent restart did not.
	c.latched = !rebooted && latches(pubsub.NodeDrainStatus{Status: st.Status, RequestedBy: st.Requester})
	c.mu.Unlock()
	if err := c.save(); err != nil {
		c.log.WithError(err).Error("upgrade state not written")
	}
	switch {
	case st.Phase == PhaseRebooted:
		// A new boot: nothing is being drained; an asking EVE may ask
		// again (the request is taken up once this cycle is finished).
		c.publish(pubsub.DrainStatusNotRequested)
	case st.active():
		c.log.WithFields(logrus.Fields{"phase": st.Phase, "attempt": st.Attempt}).Info("resuming the cycle the last run left")
		c.publish(st.Status)
	}

	snaps := pubsub.NewWatcher(c.cfg.EVE, c.cfg.Watch).Watch(ctx)
	tick := time.NewTicker(c.cfg.Tick)
	defer tick.Stop()
	defer c.stopDrain()
	haveSnap := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case s, ok := <-snaps:
			if !ok {
				return nil
			}
			c.mu.Lock()
			c.snap = s
			c.mu.Unlock()
			haveSnap = true
		case <-tick.C:
		}
		if haveSnap {
			c.step(ctx)
		}
	}
}

// step moves the state machine on from what EVE shows now.
func (c *Coordinator) step(ctx context.Context) {
	c.stepMu.Lock()
	defer c.stepMu.Unlock()
	c.republish()
	c.mu.Lock()
	snap, st := c.snap, c.st
	draining := c.drain != nil
	c.mu.Unlock()
	if st.Phase == PhaseRebooted {
		c.afterReboot(ctx, snap)
		return
	}
	asks := st.SawDrainRequest || (snap.NodeAgent != nil && snap.NodeAgent.HVTypeKube)
	req := detect(snap, asks, st.Done, time.Now())
	if req != nil && req.asked && !st.SawDrainRequest {
		c.update(func(s *State) { s.SawDrainRequest = true })
	}
	switch st.Phase {
	case PhaseIdle:
		if req == nil {
			c.publish(pubsub.DrainStatusNotRequested)
			return
		}
		c.begin(ctx, req, snap)
	case PhaseDraining, PhaseDrained, PhaseFailed:
		if req == nil {
			c.withdraw(ctx)
			return
		}
		if msg, failed := failedUpdate(snap, &st); failed {
			c.updateFailed(ctx, snap, msg)
			return
		}
		if st.Phase == PhaseFailed && req.asked && req.key != st.Key {
			// EVE withdrew after the failure and asks again.
			c.begin(ctx, req, snap)
			return
		}
		if st.Phase == PhaseDraining && !draining {
			c.startDrain(ctx) // resumed after a restart
		}
	}
}

func (c *Coordinator) begin(ctx context.Context, req *request, snap pubsub.Snapshot) {
	c.stopDrain()
	c.update(func(s *State) {
		keep := s.active() && s.WeCordoned // a retry: evelet still holds its cordon
		*s = State{Node: s.Node, Phase: PhaseDraining, Key: req.key, Trigger: req.trigger, Requester: req.requester,
			RequestedAt: req.at, FromVersion: snap.RunningVersion(), ToVersion: req.toVersion, ContentTreeUUID: req.contentTree,
			WeCordoned: keep, SawDrainRequest: s.SawDrainRequest || req.asked, Done: s.Done, Status: s.Status}
	})
	st := c.State()
	c.log.WithFields(logrus.Fields{"trigger": st.Trigger, "from": st.FromVersion, "to": st.ToVersion}).Info("EVE is about to reboot the device; draining the node")
	c.publish(pubsub.DrainStatusRequested)
	what := "a reboot"
	if st.ToVersion != "" {
		what = fmt.Sprintf("an OS update from %s to %s", st.FromVersion, st.ToVersion)
	}
	c.node.event(ctx, corev1.EventTypeNormal, ReasonRequested, fmt.Sprintf("EVE prepares %s (%s); evelet cordons and drains the node", what, st.Trigger))
	c.startDrain(ctx)
}

func (c *Coordinator) startDrain(ctx context.Context) {
	dctx, cancel := context.WithCancel(ctx)
	job := &drainJob{cancel: cancel, done: make(chan struct{})}
	c.mu.Lock()
	c.drain = job
	c.mu.Unlock()
	go func() {
		defer close(job.done)
		defer func() {
			c.mu.Lock()
			if c.drain == job {
				c.drain = nil
			}
			c.mu.Unlock()
		}()
		c.runDrain(dctx)
	}()
}

// stopDrain cancels a running drain and waits for it.
func (c *Coordinator) stopDrain() {
	c.mu.Lock()
	job := c.drain
	c.drain = nil
	c.mu.Unlock()
	if job != nil {
		job.cancel()
		<-job.done
	}
}

// runDrain is one cycle's cordon and drain attempts.
func (c *Coordinator) runDrain(ctx context.Context) {
	c.publish(pubsub.DrainStatusStarting)
	if err := c.cordon(ctx); err != nil {
		if ctx.Err() != nil {
			return
		}
		c.log.WithError(err).Error("cordon failed; EVE is told FailedCordon")
		c.update(func(s *State) { s.Phase, s.LastError = PhaseFailed, err.Error() })
		c.node.event(ctx, corev1.EventTypeWarning, ReasonCordonFailed, "cordon for the EVE OS update failed: "+err.Error())
		c.markBestEffort(ctx, corev1.ConditionTrue, ReasonCordonFailed, "cordon failed; EVE withdraws its request and asks again: "+err.Error())
		c.publish(pubsub.DrainStatusFailedCordon)
		return
	}
	c.publish(pubsub.DrainStatusCordoned)
	c.markBestEffort(ctx, corev1.ConditionTrue, ReasonDraining, c.pendingText()+"; evicting pods")
	for {
		set := c.settings()
		c.mu.Lock()
		c.st.Attempt++
		attempt := c.st.Attempt
		c.mu.Unlock()
		if err := c.save(); err != nil {
			c.log.WithError(err).Error("upgrade state not written")
		}
		d := &drain.Drainer{Client: c.cfg.Client, Node: c.cfg.Node, Log: c.log, Timeout: set.DrainTimeout, RetryInterval: set.EvictionRetry}
		err := d.Drain(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			break
		}
		c.log.WithError(err).WithField("attempt", attempt).Warn("drain attempt failed")
		c.update(func(s *State) { s.LastError = err.Error() })
		if attempt >= set.DrainAttempts {
			c.update(func(s *State) { s.Phase = PhaseFailed })
			msg := fmt.Sprintf("drain failed after %d attempts: %v; EVE withdraws its request and may ask again", attempt, err)
			c.node.event(ctx, corev1.EventTypeWarning, ReasonDrainFailed, msg)
			c.markBestEffort(ctx, corev1.ConditionTrue, ReasonDrainFailed, msg)
			c.publish(pubsub.DrainStatusFailedDrain)
			return
		}
		msg := fmt.Sprintf("drain attempt %d of %d failed: %v; next attempt in %v", attempt, set.DrainAttempts, err, set.DrainRetryInterval)
		c.node.event(ctx, corev1.EventTypeWarning, ReasonDrainRetrying, msg)
		c.markBestEffort(ctx, corev1.ConditionTrue, ReasonDrainRetrying, msg)
		c.publish(pubsub.DrainStatusDrainRetrying)
		select {
		case <-ctx.Done():
			return
		case <-time.After(set.DrainRetryInterval):
		}
	}
	// The node shows the outcome before EVE learns it (and may reboot).
	c.update(func(s *State) { s.Phase, s.LastError = PhaseDrained, "" })
	c.node.event(ctx, corev1.EventTypeNormal, ReasonDrained, "node drained; EVE may reboot the device")
	c.markBestEffort(ctx, corev1.ConditionTrue, ReasonDrained, c.pendingText()+"; node drained, waiting for EVE to reboot")
	c.publish(pubsub.DrainStatusComplete)
	c.log.Info("node drained; EVE told Complete")
}

// cordon sets unschedulable unless someone else already did; the intent
// is recorded before the patch, so a crash in between still uncordons.
func (c *Coordinator) cordon(ctx context.Context) error {
	var last error
	for try := 0; try < c.cfg.CordonTries; try++ {
		if try > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(c.cfg.CordonInterval):
			}
		}
		n, err := c.node.get(ctx)
		if err != nil {
			last = err
			continue
		}
		st := c.State()
		if n.Spec.Unschedulable && !st.WeCordoned {
			c.log.Info("node already cordoned by someone else; that cordon stays after the cycle")
			return nil
		}
		c.update(func(s *State) { s.WeCordoned = true })
		if last = c.node.setUnschedulable(ctx, true); last == nil {
			return nil
		}
	}
	return fmt.Errorf("%d tries: %w", c.cfg.CordonTries, last)
}

// withdraw: EVE no longer asks (or the early signal went away) and the
// device did not reboot: give the node back.
func (c *Coordinator) withdraw(ctx context.Context) {
	c.stopDrain()
	st := c.State()
	c.log.WithField("phase", st.Phase).Info("EVE withdrew its request; uncordoning")
	msg := "EVE withdrew its request"
	if st.Phase == PhaseFailed {
		msg += " after the drain failed"
	}
	c.finish(ctx, ReasonWithdrawn, corev1.EventTypeNormal, msg, "")
}

// updateFailed: baseosmgr reports an error for the update; no reboot comes.
func (c *Coordinator) updateFailed(ctx context.Context, snap pubsub.Snapshot, why string) {
	c.stopDrain()
	st := c.State()
	c.remember(snap, st.ToVersion)
	c.finish(ctx, ReasonOSUpdateFailed, corev1.EventTypeWarning, fmt.Sprintf("EVE could not install %s: %s", st.ToVersion, why), "")
}

// afterReboot ends the cycle once the node is Ready on this boot.
func (c *Coordinator) afterReboot(ctx context.Context, snap pubsub.Snapshot) {
	running := snap.RunningVersion()
	if running == "" {
		return // baseosmgr has not published ZbootStatus yet
	}
	n, err := c.node.get(ctx)
	if err != nil || !isReady(n, c.started) {
		return
	}
	st := c.State()
	c.remember(snap, st.ToVersion)
	switch {
	case st.ToVersion == "":
		c.finish(ctx, ReasonRebooted, corev1.EventTypeNormal, fmt.Sprintf("device rebooted, running %s", running), running)
	case running == st.FromVersion:
		c.finish(ctx, ReasonOSUpdateFailed, corev1.EventTypeWarning, fmt.Sprintf("EVE OS update to %s did not take: the device runs %s again (fallback)", st.ToVersion, running), running)
	default:
		c.finish(ctx, ReasonOSUpdated, corev1.EventTypeNormal, fmt.Sprintf("EVE OS updated from %s to %s", st.FromVersion, running), running)
	}
}

// remember marks an update version as handled so its still-present
// BaseOsConfig does not start another cycle until EVE retries it.
func (c *Coordinator) remember(snap pubsub.Snapshot, version string) {
	if version == "" {
		return
	}
	var retry uint32
	for _, cfg := range snap.BaseOsConfigs {
		if cfg.BaseOsVersion == version {
			retry = cfg.RetryUpdateCounter
		}
	}
	c.update(func(s *State) {
		if s.Done == nil {
			s.Done = map[string]uint32{}
		}
		s.Done[version] = retry
	})
}

// finish ends a cycle: uncordon if evelet cordoned, label (running != ""),
// condition False with the outcome, annotations cleared, Event, idle.
// Cluster writes that fail are retried on the next step: the state moves
// on only when the uncordon went through.
func (c *Coordinator) finish(ctx context.Context, reason, evType, msg, running string) {
	st := c.State()
	if st.WeCordoned {
		if err := c.node.setUnschedulable(ctx, false); err != nil {
			c.log.WithError(err).Warn("uncordon failed; retrying")
			return
		}
	}
	if running != "" {
		if err := c.node.setVersionLabel(ctx, running); err != nil {
			c.log.WithError(err).Warn("os-version label not updated; retrying")
			return
		}
	}
	if st.WeCordoned {
		msg += "; node uncordoned"
	} else {
		msg += "; the node's cordon was not set by evelet and stays"
	}
	c.update(func(s *State) {
		s.Phase, s.WeCordoned, s.Attempt, s.Key = PhaseIdle, false, 0, ""
	})
	c.node.event(ctx, evType, reason, msg)
	c.markBestEffort(ctx, corev1.ConditionFalse, reason, msg)
	c.log.WithField("reason", reason).Info(msg)
	c.publish(pubsub.DrainStatusNotRequested)
}

func (c *Coordinator) pendingText() string {
	st := c.State()
	if st.ToVersion == "" {
		return "EVE reboot pending (" + st.Trigger + ")"
	}
	return "EVE OS update to " + st.ToVersion + " pending (" + st.Trigger + ")"
}

// markBestEffort writes the condition and annotations; a failure is logged
// (the drain itself matters more than its display).
func (c *Coordinator) markBestEffort(ctx context.Context, status corev1.ConditionStatus, reason, msg string) {
	st := c.State()
	if err := c.node.mark(ctx, &st); err != nil {
		c.log.WithError(err).Warn("node annotations not written")
	}
	if err := c.node.condition(ctx, status, reason, msg); err != nil {
		c.log.WithError(err).Warn("node condition not written")
	}
}

// latches reports whether nodeagent sets WaitDrainInProgress on ns: a
// DeviceOp status from Requested to FailedDrain. It clears it only on a
// DeviceOp Complete (pillar cmd/nodeagent/handlenodedrain.go); while it is
// set, zedagent defers the Local Profile Server's shutdown, poweroff and
// graceful-reboot commands (cmd/zedagent/localcommand.go), on every build.
func latches(ns pubsub.NodeDrainStatus) bool {
	return ns.RequestedBy == pubsub.DrainRequesterDeviceOp &&
		ns.Status >= pubsub.DrainStatusRequested && ns.Status < pubsub.DrainStatusComplete
}

// releaseStatus is the only status that clears nodeagent's latch.
var releaseStatus = pubsub.NodeDrainStatus{Status: pubsub.DrainStatusComplete, RequestedBy: pubsub.DrainRequesterDeviceOp}

// asks reports whether this build asks before it reboots (and so
// withdraws its request after a failed drain).
func (c *Coordinator) asks() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.SawDrainRequest || (c.snap.NodeAgent != nil && c.snap.NodeAgent.HVTypeKube)
}

// publish tells EVE (once per change) and records the status. Every cycle
// ends in a state that releases nodeagent's latch: a status that leaves
// the DeviceOp range is preceded by a DeviceOp Complete, and on a build
// that does not ask (nobody withdraws) a DeviceOp failure is followed by
// one at once.
func (c *Coordinator) publish(s pubsub.DrainStatus) {
	c.mu.Lock()
	ns := pubsub.NodeDrainStatus{Status: s, RequestedBy: pubsub.DrainRequesterNone}
	if s != pubsub.DrainStatusNotRequested {
		ns.RequestedBy = c.st.Requester
	}
	same := c.published != nil && *c.published == ns
	c.st.Status = s
	release := c.latched && !latches(ns) && ns != releaseStatus
	c.mu.Unlock()
	if same {
		return
	}
	if err := c.save(); err != nil {
		c.log.WithError(err).Error("upgrade state not written")
	}
	if release && !c.set(releaseStatus, false) {
		return
	}
	if !c.set(ns, true) {
		return
	}
	c.log.WithField("status", s.String()).Debug("NodeDrainStatus")
	if latches(ns) && (s == pubsub.DrainStatusFailedCordon || s == pubsub.DrainStatusFailedDrain) && !c.asks() {
		c.log.Info("EVE does not ask for drains on this build and withdraws nothing: releasing nodeagent's drain wait")
		c.set(releaseStatus, false)
	}
}

// set hands ns to the Publisher (record: as the cycle's published status,
// not only a latch release); false if it failed (the next step tries again).
func (c *Coordinator) set(ns pubsub.NodeDrainStatus, record bool) bool {
	if c.cfg.Publisher != nil {
		if err := c.cfg.Publisher.Set(ns); err != nil {
			c.mu.Lock()
			repeat := c.pubErr == err.Error()
			c.pubErr = err.Error()
			c.mu.Unlock()
			if !repeat {
				c.log.WithError(err).Warn("NodeDrainStatus not published; tried again at every step")
			}
			return false
		}
	}
	c.mu.Lock()
	if record {
		c.published = &ns
	}
	c.pubErr = ""
	c.latched = latches(ns)
	c.mu.Unlock()
	return true
}

// republish retries a status whose Set failed.
func (c *Coordinator) republish() {
	c.mu.Lock()
	s, retry := c.st.Status, c.pubErr != ""
	c.mu.Unlock()
	if retry && s != pubsub.DrainStatusUnknown {
		c.publish(s)
	}
}

func (c *Coordinator) update(f func(*State)) {
	c.mu.Lock()
	f(&c.st)
	c.mu.Unlock()
	if err := c.save(); err != nil {
		c.log.WithError(err).Error("upgrade state not written")
	}
}

func (c *Coordinator) save() error {
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	st := c.State()
	if err := os.MkdirAll(filepath.Dir(c.cfg.StateFile), 0o700); err != nil {
		return err
	}
	return saveState(c.cfg.StateFile, st)
}
