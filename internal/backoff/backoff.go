// Package backoff is the one restart/retry delay evelet uses: the join
// retry, the CRI server restart and the kubelet supervisor. It is written
// here rather than taken from k8s.io/apimachinery's wait.Backoff because
// all three users need "reset once the thing ran long enough", which
// wait.Backoff only offers keyed on the time between calls.
package backoff

import (
	"context"
	"time"
)

// Backoff doubles its delay from Min up to Max. The zero value is not
// usable: set Min and Max.
type Backoff struct {
	Min, Max time.Duration
	// StableAfter: an attempt that ran at least this long resets the delay
	// to Min (0: only Reset does).
	StableAfter time.Duration

	cur time.Duration
}

// Next returns the delay before the next attempt and doubles it for the
// one after (capped at Max).
func (b *Backoff) Next() time.Duration {
	if b.cur < b.Min {
		b.cur = b.Min
	}
	d := b.cur
	b.cur = min(b.cur*2, b.Max)
	return d
}

// Reset starts again at Min.
func (b *Backoff) Reset() { b.cur = 0 }

// After is Next for an attempt that ran for ran: a run of at least
// StableAfter counts as success and resets the delay first.
func (b *Backoff) After(ran time.Duration) time.Duration {
	if b.StableAfter > 0 && ran >= b.StableAfter {
		b.Reset()
	}
	return b.Next()
}

// Sleep waits d or until ctx ends; it reports whether the full d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
