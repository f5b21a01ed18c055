package agent

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lf-edge/evelet/bootstrap"
	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/internal/layout"
	kubeletshim "github.com/lf-edge/evelet/kubelet-shim"
	"github.com/sirupsen/logrus"
	"k8s.io/apimachinery/pkg/util/wait"
)

// fakeSource hands out one channel per Watch; the test decides what each
// Watch gets (closeFirst: the first one is closed at once, as by a Source
// that gave up).
type fakeSource struct {
	updates    chan intent.Update
	closeFirst bool

	mu      sync.Mutex
	watches int
}

func (f *fakeSource) Name() string { return "fake" }

func (f *fakeSource) Watch(ctx context.Context) <-chan intent.Update {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.watches++
	if f.closeFirst && f.watches == 1 {
		ch := make(chan intent.Update)
		close(ch)
		return ch
	}
	out := make(chan intent.Update)
	go func() {
		defer close(out)
		for {
			select {
			case u := <-f.updates:
				select {
				case out <- u:
				case <-ctx.Done():
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// fakeStore holds credentials for at most one cluster, identified by
// apiserver and SPKI pin, as bootstrap.Store does.
type fakeStore struct {
	mu       sync.Mutex
	rec      *bootstrap.JoinRecord
	recErr   error
	fail     func(m *bootstrap.Material) error // Prepare's error, nil: success
	prepares []bootstrap.Material
	wipes    int
}

func (s *fakeStore) Prepare(ctx context.Context, m *bootstrap.Material, now time.Time) (bootstrap.Outcome, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prepares = append(s.prepares, *m)
	if s.fail != nil {
		if err := s.fail(m); err != nil {
			return "", err
		}
	}
	if s.holds(m) {
		return bootstrap.Reused, nil
	}
	s.rec = &bootstrap.JoinRecord{APIServer: m.APIServer, CAPin: m.CACertHashes[0]}
	return bootstrap.Bootstrapped, nil
}

func (s *fakeStore) holds(m *bootstrap.Material) bool {
	return s.rec != nil && s.rec.APIServer == m.APIServer && slices.Contains(m.CACertHashes, s.rec.CAPin)
}

func (s *fakeStore) Holds(m *bootstrap.Material) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holds(m), nil
}

func (s *fakeStore) Record() (*bootstrap.JoinRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recErr != nil {
		return nil, s.recErr
	}
	if s.rec == nil {
		return nil, nil
	}
	r := *s.rec
	return &r, nil
}

func (s *fakeStore) SetNodeName(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rec != nil {
		s.rec.NodeName = name
	}
	return nil
}

func (s *fakeStore) ClientCredentials(time.Time) (bootstrap.Client, bool, error) {
	return bootstrap.Client{}, false, nil
}

// KubeconfigPath names no file: leave's drain fails to build a client and
// goes on, as with an unreachable cluster.
func (s *fakeStore) KubeconfigPath() string { return "/nonexistent/evelet-test/kubeconfig" }

func (s *fakeStore) Wipe() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rec, s.recErr = nil, nil
	s.wipes++
	return nil
}

func (s *fakeStore) counts() (prepares, wipes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.prepares), s.wipes
}

// fakeKubelets counts kubelet starts and stops.
type fakeKubelets struct {
	mu      sync.Mutex
	started []*intent.Join
	running int
}

type fakeKubelet struct {
	k   *fakeKubelets
	pid int
}

func (k *fakeKubelets) new(j *intent.Join) (kubeletProc, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.started = append(k.started, j)
	return &fakeKubelet{k: k, pid: 1000 + len(k.started)}, nil
}

func (f *fakeKubelet) Run(ctx context.Context) error {
	f.k.mu.Lock()
	f.k.running++
	f.k.mu.Unlock()
	<-ctx.Done()
	f.k.mu.Lock()
	f.k.running--
	f.k.mu.Unlock()
	return nil
}
func (f *fakeKubelet) PID() int      { return f.pid }
func (f *fakeKubelet) Restarts() int { return 0 }

func (k *fakeKubelets) counts() (started, running int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.started), k.running
}

type harness struct {
	t       *testing.T
	a       *Agent
	src     *fakeSource
	store   *fakeStore
	kubelet *fakeKubelets
	cancel  context.CancelFunc
	done    chan error
	seq     int
}

func newHarness(t *testing.T, src *fakeSource, store *fakeStore) *harness {
	t.Helper()
	dir := t.TempDir()
	if src == nil {
		src = &fakeSource{}
	}
	if src.updates == nil {
		src.updates = make(chan intent.Update)
	}
	if store == nil {
		store = &fakeStore{}
	}
	log := logrus.New()
	log.SetOutput(testWriter{t})
	a := New(Config{StateDir: filepath.Join(dir, "persist"), RunDir: filepath.Join(dir, "run"), Source: src,
		RetryMin: time.Millisecond, RetryMax: 10 * time.Millisecond, Log: logrus.NewEntry(log)})
	h := &harness{t: t, a: a, src: src, store: store, kubelet: &fakeKubelets{}, done: make(chan error, 1)}
	a.store = store
	a.newKubelet = h.kubelet.new
	a.serveCRI = func(ctx context.Context) error { <-ctx.Done(); return nil }
	a.removeNodeRules = func() error { return nil }
	return h
}

func (h *harness) start() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- h.a.Run(ctx) }()
	h.t.Cleanup(h.stop)
}

// stop cancels Run and fails the test if it does not return.
func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		h.t.Fatal("Run did not return after its context ended")
	}
}

func (h *harness) send(u intent.Update) {
	h.t.Helper()
	select {
	case h.src.updates <- u:
	case <-time.After(10 * time.Second):
		h.t.Fatal("agent does not read its Source")
	}
}

// sync sends j again with a new config item and waits until the agent
// applied it: every update sent before has been handled by then.
func (h *harness) sync(j *intent.Join) {
	h.t.Helper()
	h.seq++
	mark := map[string]string{"evelet.test-seq": string(rune('a' + h.seq))}
	h.send(intent.Update{Join: j, ConfigItems: mark})
	h.eventually("config item applied", func() bool {
		h.a.mu.Lock()
		defer h.a.mu.Unlock()
		return h.a.items["evelet.test-seq"] == mark["evelet.test-seq"]
	})
}

func (h *harness) eventually(what string, ok func() bool) {
	h.t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 2*time.Millisecond, 10*time.Second, true,
		func(context.Context) (bool, error) { return ok(), nil })
	if err != nil {
		h.t.Fatalf("timed out waiting for %s; status %+v", what, h.a.Status())
	}
}

func (h *harness) waitPhase(p Phase) {
	h.t.Helper()
	h.eventually("phase "+string(p), func() bool { return h.a.Status().Phase == p })
}

// waitRunning: phase Running and the (fake) kubelet process up.
func (h *harness) waitRunning() {
	h.t.Helper()
	h.waitPhase(PhaseRunning)
	h.eventually("kubelet running", func() bool { _, r := h.kubelet.counts(); return r == 1 })
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

const (
	pinA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	pinB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func joinA(token, pin string) *intent.Join {
	return &intent.Join{
		Material: bootstrap.Material{APIServer: "https://10.0.0.1:6443", Token: token, CACertHashes: []string{pin}},
		NodeName: "edge-1", DeviceUUID: "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
	}
}

func TestAgentJoinsOnceForRepeatedIntent(t *testing.T) {
	h := newHarness(t, nil, nil)
	h.start()
	h.send(intent.Update{})
	h.waitPhase(PhaseNoJoin)
	h.send(intent.Update{Join: joinA("abcdef.0123456789abcdef", pinA)})
	h.waitRunning()
	h.sync(joinA("abcdef.0123456789abcdef", pinA)) // same content, new pointer
	if started, running := h.kubelet.counts(); started != 1 || running != 1 {
		t.Fatalf("kubelet started %d times, %d running; want 1, 1", started, running)
	}
}

// TestTokenOnlyChangeKeepsKubelet: a new bootstrap token for the cluster the
// node is in must not restart the kubelet (before: any change did).
func TestTokenOnlyChangeKeepsKubelet(t *testing.T) {
	h := newHarness(t, nil, nil)
	h.start()
	h.send(intent.Update{Join: joinA("abcdef.0123456789abcdef", pinA)})
	h.waitRunning()
	h.sync(joinA("ghijkl.0123456789abcdef", pinA))
	if started, running := h.kubelet.counts(); started != 1 || running != 1 {
		t.Fatalf("token-only change: kubelet started %d times, %d running; want 1, 1", started, running)
	}
	if p, w := h.store.counts(); p != 1 || w != 0 {
		t.Fatalf("token-only change: %d Prepare calls, %d wipes; want 1, 0", p, w)
	}
}

// TestTokenChangeWhileJoiningRetriesWithIt: before the kubelet runs, a new
// token replaces the one that does not work.
func TestTokenChangeWhileJoiningRetriesWithIt(t *testing.T) {
	store := &fakeStore{fail: func(m *bootstrap.Material) error {
		if strings.HasPrefix(m.Token, "abcdef.") {
			return errors.New("token id \"abcdef\" is unknown (retryable)")
		}
		return nil
	}}
	h := newHarness(t, nil, store)
	h.start()
	h.send(intent.Update{Join: joinA("abcdef.0123456789abcdef", pinA)})
	h.eventually("a failed Prepare", func() bool { p, _ := store.counts(); return p >= 2 })
	h.send(intent.Update{Join: joinA("ghijkl.0123456789abcdef", pinA)})
	h.waitRunning()
	store.mu.Lock()
	last := store.prepares[len(store.prepares)-1].Token
	store.mu.Unlock()
	if !strings.HasPrefix(last, "ghijkl.") {
		t.Fatalf("last Prepare used token %s..., want the new one", last[:6])
	}
}

// TestRebuiltClusterLeavesAndRejoins: same apiserver, new CA pin: another
// cluster. The device leaves (wipes) and joins again (before: the URL alone
// decided, and nothing happened).
func TestRebuiltClusterLeavesAndRejoins(t *testing.T) {
	h := newHarness(t, nil, nil)
	h.start()
	h.send(intent.Update{Join: joinA("abcdef.0123456789abcdef", pinA)})
	h.waitRunning()
	h.send(intent.Update{Join: joinA("ghijkl.0123456789abcdef", pinB)})
	h.eventually("second kubelet", func() bool { s, r := h.kubelet.counts(); return s == 2 && r == 1 })
	h.waitRunning()
	if _, w := h.store.counts(); w != 1 {
		t.Fatalf("%d wipes, want 1 (leave before rejoining)", w)
	}
	if rec, _ := h.store.Record(); rec == nil || rec.CAPin != pinB {
		t.Fatalf("record after rejoin: %+v", rec)
	}
}

func TestIntentRemovedLeaves(t *testing.T) {
	h := newHarness(t, nil, nil)
	h.start()
	h.send(intent.Update{Join: joinA("abcdef.0123456789abcdef", pinA)})
	h.waitRunning()
	h.send(intent.Update{})
	h.waitPhase(PhaseLeft)
	if _, running := h.kubelet.counts(); running != 0 {
		t.Fatal("kubelet still running after leaving")
	}
	if _, w := h.store.counts(); w != 1 {
		t.Fatalf("%d wipes, want 1", w)
	}
}

// TestSourceErrorKeepsNode: a refused intent leaves the node as it is.
func TestSourceErrorKeepsNode(t *testing.T) {
	h := newHarness(t, nil, nil)
	h.start()
	h.send(intent.Update{Join: joinA("abcdef.0123456789abcdef", pinA)})
	h.waitRunning()
	h.send(intent.Update{Err: errors.New("checkpoint truncated")})
	h.eventually("error in status", func() bool { return h.a.Status().LastError == "checkpoint truncated" })
	if s, r := h.kubelet.counts(); s != 1 || r != 1 || h.a.Status().Phase != PhaseRunning {
		t.Fatalf("after a refused intent: started %d, running %d, phase %s", s, r, h.a.Status().Phase)
	}
	if _, w := h.store.counts(); w != 0 {
		t.Fatal("credentials wiped on a refused intent")
	}
}

// TestSourceClosingDoesNotDeadlock: a Source that closes its channel is
// watched again; the agent neither hangs (before: Run waited for the CRI
// goroutine, which waited for a context nobody cancelled) nor stops.
func TestSourceClosingDoesNotDeadlock(t *testing.T) {
	h := newHarness(t, &fakeSource{closeFirst: true}, nil)
	h.start()
	h.send(intent.Update{Join: joinA("abcdef.0123456789abcdef", pinA)})
	h.waitRunning()
	h.src.mu.Lock()
	w := h.src.watches
	h.src.mu.Unlock()
	if w != 2 {
		t.Fatalf("%d watches, want 2", w)
	}
	h.stop()
}

// TestLeaveWithUnreadableRecord: leave must not dereference a nil record.
func TestLeaveWithUnreadableRecord(t *testing.T) {
	store := &fakeStore{recErr: errors.New("join record: invalid character")}
	h := newHarness(t, nil, store)
	h.a.publish(func(s *Status) { s.NodeName = "edge-1" })
	stopped := false
	h.a.leave(context.Background(), func() { stopped = true })
	st := h.a.Status()
	if st.Phase != PhaseLeft || !stopped || !strings.Contains(st.LastError, "join record") {
		t.Fatalf("phase %s, kubelet stopped %v, error %q", st.Phase, stopped, st.LastError)
	}
	if _, w := store.counts(); w != 1 {
		t.Fatalf("%d wipes, want 1", w)
	}
}

// TestCRIBackoffGrowsWhenServeFails: a CRI server that fails as soon as it
// is built is restarted with a growing delay (before: the back-off was
// reset before Serve, so it retried at the minimum for ever).
func TestCRIBackoffGrowsWhenServeFails(t *testing.T) {
	h := newHarness(t, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h.a.serveCRI = func(context.Context) error { return errors.New("cri: listen: address in use") }
	var waits []time.Duration
	h.a.sleep = func(_ context.Context, d time.Duration) bool {
		waits = append(waits, d)
		if len(waits) == 4 {
			cancel()
			return false
		}
		return true
	}
	h.a.runCRI(ctx)
	want := []time.Duration{time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond, 8 * time.Millisecond}
	if !slices.Equal(waits, want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
}

// TestStatusHeartbeat: status.json is rewritten at the heartbeat interval
// even when nothing changed; Updated stays at the last change.
func TestStatusHeartbeat(t *testing.T) {
	h := newHarness(t, nil, nil)
	os.MkdirAll(h.a.cfg.RunDir, 0o700)
	h.a.heartbeat = time.Millisecond
	h.a.publish(func(s *Status) { s.Phase = PhaseNoJoin })
	first, err := ReadStatus(h.a.cfg.RunDir)
	if err != nil || first.Heartbeat.IsZero() || first.AgentPID != os.Getpid() {
		t.Fatalf("first status %+v, %v", first, err)
	}
	var next *Status
	h.eventually("a newer heartbeat", func() bool {
		h.a.refresh()
		next, _ = ReadStatus(h.a.cfg.RunDir)
		return next != nil && next.Heartbeat.After(first.Heartbeat)
	})
	if !next.Updated.Equal(first.Updated) {
		t.Fatalf("Updated moved from %v to %v without a change", first.Updated, next.Updated)
	}
	if alive, why := next.Liveness(time.Now()); !alive {
		t.Fatalf("fresh status judged dead: %s", why)
	}
}

func TestLivenessStaleAndGone(t *testing.T) {
	old := time.Now().Add(-time.Hour)
	s := Status{Heartbeat: old, AgentPID: os.Getpid()}
	if alive, why := s.Liveness(time.Now()); alive || !strings.Contains(why, "stale since") {
		t.Fatalf("hour-old heartbeat: alive=%v %q", alive, why)
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skip("no true(1):", err)
	}
	s = Status{Heartbeat: time.Now(), AgentPID: cmd.Process.Pid}
	if alive, why := s.Liveness(time.Now()); alive || !strings.Contains(why, "not running") {
		t.Fatalf("dead pid %d: alive=%v %q", cmd.Process.Pid, alive, why)
	}
}

// TestKubeletLayoutAgrees: the agent's guardrail policy and the kubelet's
// flags must name the same directories (kubelet-shim computes its own until
// it uses internal/layout).
func TestKubeletLayoutAgrees(t *testing.T) {
	dir := "/persist/evelet"
	l := layout.State{Dir: dir}
	o := kubeletshim.Options{StateDir: dir}
	if o.RootDir() != l.KubeletRoot() || o.PodLogsDir() != l.PodLogs() || o.ConfigPath() != l.KubeletConfig() {
		t.Fatalf("kubelet-shim %s %s %s vs layout %s %s %s", o.RootDir(), o.PodLogsDir(), o.ConfigPath(), l.KubeletRoot(), l.PodLogs(), l.KubeletConfig())
	}
}

// TestRefusedConfigItemsInStatus: an owner's knob that does not parse is
// shown in the status (and in status.json), not only logged, and a fixed
// value clears it.
func TestRefusedConfigItemsInStatus(t *testing.T) {
	h := newHarness(t, nil, nil)
	h.start()
	h.send(intent.Update{ConfigItems: map[string]string{
		"evelet.policy.allow-privileged": "maybe",
		"evelet.kubelet.pod-pids-limit":  "lots",
	}})
	h.eventually("both refused items in the status file", func() bool {
		s, err := ReadStatus(h.a.cfg.RunDir)
		if err != nil || len(s.ConfigErrors) != 2 {
			return false
		}
		all := strings.Join(s.ConfigErrors, "\n")
		return strings.Contains(all, "evelet.policy.allow-privileged") && strings.Contains(all, "evelet.kubelet.pod-pids-limit")
	})
	h.send(intent.Update{ConfigItems: map[string]string{"evelet.policy.allow-privileged": "false"}})
	h.eventually("errors cleared", func() bool {
		s, err := ReadStatus(h.a.cfg.RunDir)
		return err == nil && len(s.ConfigErrors) == 0
	})
}
