package backoff

import (
	"context"
	"testing"
	"time"
)

func TestNextDoublesUpToMax(t *testing.T) {
	b := Backoff{Min: time.Second, Max: 5 * time.Second}
	want := []time.Duration{1, 2, 4, 5, 5}
	for i, w := range want {
		if got := b.Next(); got != w*time.Second {
			t.Fatalf("step %d: %v, want %v", i, got, w*time.Second)
		}
	}
	b.Reset()
	if got := b.Next(); got != time.Second {
		t.Fatalf("after Reset: %v", got)
	}
}

func TestAfterResetsOnlyOnAStableRun(t *testing.T) {
	b := Backoff{Min: time.Second, Max: time.Minute, StableAfter: 10 * time.Second}
	for i, w := range []time.Duration{1, 2, 4} {
		if got := b.After(time.Millisecond); got != w*time.Second {
			t.Fatalf("short run %d: %v, want %v", i, got, w*time.Second)
		}
	}
	if got := b.After(10 * time.Second); got != time.Second {
		t.Fatalf("after a stable run: %v, want 1s", got)
	}
}

func TestSleepStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, time.Hour) {
		t.Fatal("Sleep reported a full wait on a cancelled context")
	}
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep did not report a full wait")
	}
}
