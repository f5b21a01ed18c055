package containerd

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDialMissingSocketFailsNamingIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no-such-containerd.sock")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	_, err := Dial(ctx, "unix://"+path)
	if err == nil {
		t.Fatal("Dial to a missing socket succeeded")
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name %s", err, path)
	}
	if !strings.Contains(err.Error(), "no such file") {
		t.Errorf("error %q does not say why", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Dial took %v, want about the 1s timeout", d)
	}
	t.Log(err)
}

func TestDialSilentSocketTimesOut(t *testing.T) {
	// Something listens but never speaks gRPC, like a wedged containerd.
	path := filepath.Join(shortDir(t), "silent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = Dial(ctx, path)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("Dial = %v, want an error naming %s", err, path)
	}
	t.Log(err)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Dial took %v", d)
	}
}

func TestSocketPath(t *testing.T) {
	for in, want := range map[string]string{
		"unix:///run/containerd/containerd.sock": "/run/containerd/containerd.sock",
		"/run/containerd/containerd.sock":        "/run/containerd/containerd.sock",
	} {
		if got, err := socketPath(in); err != nil || got != want {
			t.Errorf("socketPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"tcp://127.0.0.1:1234", "npipe:////./pipe/x", "relative.sock", "unix://relative.sock", ""} {
		if _, err := socketPath(bad); err == nil {
			t.Errorf("socketPath(%q) accepted", bad)
		}
	}
}

func shortDir(t *testing.T) string {
	dir, err := os.MkdirTemp("/tmp", "evl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
