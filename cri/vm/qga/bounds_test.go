package qga

import (
	"context"
	"errors"
	"io"

	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// hostileSize is what the hostile agents below send in one answer: the
// 100 MB of the attack in issue 21.
const hostileSize = 100 << 20

// writeRepeated writes n bytes of b's pattern without holding them: the
// test measures the client's allocations, not its own.
func writeRepeated(w io.Writer, pattern []byte, n int) error {
	chunk := make([]byte, 0, 64<<10)
	for len(chunk)+len(pattern) <= cap(chunk) {
		chunk = append(chunk, pattern...)
	}
	for n > 0 {
		k := min(n, len(chunk))
		if _, err := w.Write(chunk[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// allocatedDuring reports the bytes the process allocated while f ran.
func allocatedDuring(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// maxAllocated is what reading one hostile answer may cost the client:
// a few times MaxAnswer (the decoder's buffer, the raw answer, the decoded
// output), far below the 100 MB the guest sends.
const maxAllocated = 8 * MaxAnswer

// TestHostileExecStatusIsBounded: a guest agent answering guest-exec-status
// with 100 MB of output costs the client at most a few MaxAnswer, and the
// exec fails with an error saying why (issue 21 item 10: the evelet agent
// went from 117 to 521 MB on one kubectl exec).
func TestHostileExecStatusIsBounded(t *testing.T) {
	a := startAgent(t, &fakeAgent{
		answer: func(req map[string]any) []byte {
			if req["execute"] == "guest-exec" {
				return ret(map[string]int{"pid": 1})
			}
			return nil
		},
		stream: func(req map[string]any, w io.Writer) bool {
			if req["execute"] != "guest-exec-status" {
				return false
			}
			io.WriteString(w, `{"return": {"exited": true, "exitcode": 0, "out-data": "`)
			writeRepeated(w, []byte("QUFB"), hostileSize) // base64 of "AAA"
			io.WriteString(w, "\"}}\n")
			return true
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var err error
	n := allocatedDuring(func() {
		var c *Client
		c, err = Dial(ctx, a.path)
		if err != nil {
			return
		}
		defer c.Close()
		_, err = c.Exec(ctx, ExecRequest{Path: "/bin/true"})
	})
	t.Logf("exec against a 100 MB guest-exec-status answer: %v; allocated %d MiB", err, n>>20)
	if !errors.Is(err, ErrAnswerTooLarge) || !strings.Contains(err.Error(), "guest-exec-status") {
		t.Errorf("exec: %v, want ErrAnswerTooLarge naming guest-exec-status", err)
	}
	if n > maxAllocated {
		t.Errorf("the client allocated %d MiB reading the hostile answer, want at most %d MiB", n>>20, maxAllocated>>20)
	}
}

// TestHostileStaleOutputIsBounded: 100 MB without a delimiter, or a 100 MB
// answer after one, before the sync answer cost the client no more than a
// bounded buffer each.
func TestHostileStaleOutputIsBounded(t *testing.T) {
	for name, junk := range map[string]func(io.Writer){
		"no delimiter": func(w io.Writer) { writeRepeated(w, []byte("x"), hostileSize) },
		"huge answer after a delimiter": func(w io.Writer) {
			w.Write([]byte{delimiter})
			io.WriteString(w, `{"return": "`)
			writeRepeated(w, []byte("y"), hostileSize)
			io.WriteString(w, "\"}\n")
		},
	} {
		t.Run(name, func(t *testing.T) {
			a := startAgent(t, &fakeAgent{
				answer:     func(req map[string]any) []byte { return ret(map[string]any{}) },
				beforeSync: func(w io.Writer) { junk(w) },
			})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var err error
			n := allocatedDuring(func() {
				var c *Client
				c, err = DialTimeout(ctx, a.path, 30*time.Second)
				if err != nil {
					return
				}
				defer c.Close()
				err = c.Ping(ctx)
			})
			t.Logf("sync after 100 MB of stale output: %v; allocated %d MiB", err, n>>20)
			if err != nil {
				t.Errorf("sync and ping after the junk: %v", err)
			}
			if n > maxAllocated {
				t.Errorf("the client allocated %d MiB skipping the junk, want at most %d MiB", n>>20, maxAllocated>>20)
			}
		})
	}
}

// TestAnswerBudgetIsShared: the bytes of answers being read are bounded
// across all clients of the process, not only per call: with the budget
// taken, a read waits (and gives up with its context).
func TestAnswerBudgetIsShared(t *testing.T) {
	a := startAgent(t, &fakeAgent{answer: func(map[string]any) []byte { return ret(map[string]any{}) }})
	ctx := context.Background()
	c, err := Dial(ctx, a.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !answerBudget.TryAcquire(maxAnswersInFlight * MaxAnswer) {
		t.Fatal("the answer budget is not free at the start")
	}
	var once sync.Once
	release := func() { once.Do(func() { answerBudget.Release(maxAnswersInFlight * MaxAnswer) }) }
	defer release()
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := c.Ping(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ping with the budget taken: %v, want it to wait for the budget", err)
	}
	release()
	c.Close()
	c2, err := Dial(ctx, a.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.Ping(ctx); err != nil {
		t.Fatalf("ping once the budget is back: %v", err)
	}
}
