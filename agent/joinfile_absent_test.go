package agent

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/internal/atomicfile"
)

// absenceHarness drives a JoinFile with a fake clock and counts polls, so
// "nothing was reported" is checked after known polls, not after a sleep.
type absenceHarness struct {
	t     *testing.T
	f     *JoinFile
	ch    <-chan intent.Update
	mu    sync.Mutex
	now   time.Time
	polls chan struct{}
}

func newAbsence(t *testing.T, absentFor time.Duration) *absenceHarness {
	h := &absenceHarness{t: t, now: time.Unix(1_000_000, 0), polls: make(chan struct{}, 1000)}
	h.f = &JoinFile{Path: filepath.Join(t.TempDir(), "join.yaml"), Interval: time.Millisecond, AbsentFor: absentFor}
	h.f.now = func() time.Time { h.mu.Lock(); defer h.mu.Unlock(); return h.now }
	h.f.polled = func() { h.polls <- struct{}{} }
	return h
}

func (h *absenceHarness) watch() {
	ctx, cancel := context.WithCancel(context.Background())
	h.t.Cleanup(cancel)
	h.ch = h.f.Watch(ctx)
}

// write replaces the file atomically, so no poll sees half of it.
func (h *absenceHarness) write(content string) {
	h.t.Helper()
	if err := atomicfile.WriteFile(h.f.Path, []byte(content), 0o600); err != nil {
		h.t.Fatal(err)
	}
}

func (h *absenceHarness) advance(d time.Duration) { h.mu.Lock(); h.now = h.now.Add(d); h.mu.Unlock() }

func (h *absenceHarness) next() intent.Update {
	h.t.Helper()
	select {
	case u := <-h.ch:
		return u
	case <-time.After(10 * time.Second):
		h.t.Fatal("no update")
	}
	return intent.Update{}
}

// quietFor waits for n more polls and asserts none of them reported.
// Watch sends before it counts the poll, so an update would be queued by
// then.
func (h *absenceHarness) quietFor(n int, why string) {
	h.t.Helper()
	for len(h.polls) > 0 {
		<-h.polls
	}
	for i := 0; i < n; i++ {
		select {
		case <-h.polls:
		case <-time.After(10 * time.Second):
			h.t.Fatal("watcher stopped polling")
		}
	}
	select {
	case u := <-h.ch:
		h.t.Fatalf("%s: reported %+v", why, u)
	default:
	}
}

// TestJoinFileVanishingIsNotALeave: a join file that disappears must stay
// away for AbsentFor before the device counts as "not in a cluster"
// (before: the next poll reported it, and the agent drained and wiped).
func TestJoinFileVanishingIsNotALeave(t *testing.T) {
	h := newAbsence(t, time.Minute)
	h.write(goodJoin)
	h.watch()
	if u := h.next(); u.Join == nil || u.Err != nil {
		t.Fatalf("first update %+v", u)
	}
	os.Remove(h.f.Path)
	h.quietFor(3, "file missing for less than AbsentFor")
	h.advance(59 * time.Second)
	h.quietFor(3, "file missing for 59 s of 60")

	// Back with the same content: nothing happened at all.
	h.write(goodJoin)
	h.quietFor(2, "same file back")
	os.Remove(h.f.Path)
	h.quietFor(2, "missing again, clock restarted")
	h.advance(time.Minute)
	if u := h.next(); u.Join != nil || u.Err != nil {
		t.Fatalf("after a minute missing: %+v, want not-joined", u)
	}
}

// TestJoinFileMissingAtStart: at start too (a volume mounted late must not
// make a joined device leave).
func TestJoinFileMissingAtStart(t *testing.T) {
	h := newAbsence(t, time.Minute)
	h.watch()
	h.quietFor(3, "missing at start")
	h.advance(time.Minute)
	if u := h.next(); u.Join != nil || u.Err != nil {
		t.Fatalf("%+v, want not-joined", u)
	}
}

// TestJoinFileLeaveTrue: an explicit request leaves at once.
func TestJoinFileLeaveTrue(t *testing.T) {
	h := newAbsence(t, time.Hour)
	h.write(goodJoin)
	h.watch()
	h.next()
	h.write("leave: true\n")
	if u := h.next(); u.Join != nil || u.Err != nil {
		t.Fatalf("leave: true gave %+v, want not-joined", u)
	}
	for _, bad := range []string{"leave: true\nnodeName: x\n", "leave: yes please\n"} {
		if _, err := ParseJoin([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestJoinFileReadErrorKeepsState: a file that exists but cannot be read is
// an error (the agent keeps what runs), not "not in a cluster".
func TestJoinFileReadErrorKeepsState(t *testing.T) {
	h := newAbsence(t, time.Hour)
	h.write(goodJoin)
	h.watch()
	h.next()
	os.Remove(h.f.Path)
	os.Mkdir(h.f.Path, 0o700)
	if u := h.next(); u.Err == nil {
		t.Fatalf("unreadable join file gave %+v, want an error", u)
	}
}
