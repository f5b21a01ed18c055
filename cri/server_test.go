package cri_test

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri"
)

func TestServeCreatesSocketDirAndMode(t *testing.T) {
	e := newEnv(t)
	fi, err := os.Stat(e.sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want socket 0660", fi.Mode())
	}
	di, err := os.Stat(filepath.Dir(e.sock))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o750 {
		t.Errorf("socket dir mode %v, want 0750", di.Mode().Perm())
	}
}

func TestServeRemovesSocketOnCancel(t *testing.T) {
	e := newEnv(t)
	if _, err := e.rt.Version(ctx(t), &runtimeapi.VersionRequest{}); err != nil {
		t.Fatal(err)
	}
	if err := e.stop(); err != nil {
		t.Fatalf("Serve returned %v after cancel, want nil", err)
	}
	if _, err := os.Lstat(e.sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket still there after Serve returned: %v", err)
	}
}

// TestServeStopsDespiteOpenEventStream: the server ends an open event
// stream itself when it stops, rather than waiting out the grace period and
// cutting it. The server says in its log when it had to cut calls; that
// line, not a stopwatch, is what the test checks.
func TestServeStopsDespiteOpenEventStream(t *testing.T) {
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	e := newEnvWith(t, func(c *cri.Config) { c.Log = logrus.NewEntry(logger) })
	e.fake.mu.Lock()
	e.fake.hold = true
	e.fake.mu.Unlock()
	stream, err := e.rt.GetContainerEvents(ctx(t), &runtimeapi.GetEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for e.fake.openStreams.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the event stream never reached the backend")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := e.stop(); err != nil {
		t.Fatal(err)
	}
	for _, en := range hook.AllEntries() {
		if strings.Contains(en.Message, "grace period") {
			t.Errorf("the server waited out its grace period for the event stream: %q", en.Message)
		}
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("event stream after shutdown: %v, want Unavailable", err)
	}
}

func TestServeReplacesStaleSocket(t *testing.T) {
	f := newFake()
	fakeSock, _ := serveFake(t, f)
	sock := filepath.Join(shortDir(t), "cri.sock")
	// A socket file left behind by a process that died.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}

	startServer(t, cri.Config{Socket: sock, Backend: dialBackend(t, fakeSock), Log: quietLog()})
	c := runtimeapi.NewRuntimeServiceClient(dialClient(t, sock))
	if v, err := c.Version(ctx(t), &runtimeapi.VersionRequest{}); err != nil || v.RuntimeName != "evelet" {
		t.Errorf("Version through the replaced socket: %v, %v", v, err)
	}
}

func TestServeRefusesLiveSocket(t *testing.T) {
	e := newEnv(t)
	s, err := cri.NewServer(cri.Config{Socket: e.sock, Backend: dialBackend(t, e.fakeSock), Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Serve(ctx(t))
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second server on a live socket: %v, want an 'in use' error", err)
	}
	// The first server must be unharmed.
	if _, err := e.rt.Version(ctx(t), &runtimeapi.VersionRequest{}); err != nil {
		t.Errorf("first server broken: %v", err)
	}
}

func TestServeRefusesNonSocket(t *testing.T) {
	f := newFake()
	fakeSock, _ := serveFake(t, f)
	sock := filepath.Join(shortDir(t), "cri.sock")
	if err := os.WriteFile(sock, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := cri.NewServer(cri.Config{Socket: sock, Backend: dialBackend(t, fakeSock), Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(ctx(t)); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Serve over a regular file: %v, want 'not a socket'", err)
	}
	if b, _ := os.ReadFile(sock); string(b) != "precious" {
		t.Error("regular file was clobbered")
	}
}

func TestNewServerValidates(t *testing.T) {
	f := newFake()
	fakeSock, _ := serveFake(t, f)
	b := dialBackend(t, fakeSock)
	for name, cfg := range map[string]cri.Config{
		"no socket":       {Backend: b},
		"no backend":      {Socket: "/tmp/x.sock"},
		"socket too long": {Socket: "/tmp/" + strings.Repeat("a", 120) + ".sock", Backend: b},
		"nil handler":     {Socket: "/tmp/x.sock", Backend: b, Handlers: map[string]cri.Backend{"eve-vm": nil}},
	} {
		if _, err := cri.NewServer(cfg); err == nil {
			t.Errorf("%s: NewServer succeeded", name)
		}
	}
}

func TestCallsAreLoggedAtDebug(t *testing.T) {
	f := newFake()
	fakeSock, _ := serveFake(t, f)
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	sock := filepath.Join(shortDir(t), "cri.sock")
	startServer(t, cri.Config{Socket: sock, Backend: dialBackend(t, fakeSock), Log: logrus.NewEntry(logger)})
	c := runtimeapi.NewRuntimeServiceClient(dialClient(t, sock))
	if _, err := c.ListContainers(ctx(t), &runtimeapi.ListContainersRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Version(ctx(t), &runtimeapi.VersionRequest{}); err != nil {
		t.Fatal(err)
	}
	var sawCall, sawBackend bool
	for _, en := range hook.AllEntries() {
		if en.Level == logrus.DebugLevel && en.Data["method"] == "/runtime.v1.RuntimeService/ListContainers" {
			if _, ok := en.Data["duration"].(time.Duration); ok {
				sawCall = true
			}
		}
		if en.Message == "backend version" && en.Data["backend"] == "containerd" && en.Data["runtimeVersion"] == "v9.8.7" {
			sawBackend = true
		}
	}
	if !sawCall {
		t.Error("no debug entry with method and duration for ListContainers")
	}
	if !sawBackend {
		t.Error("backend name/version not logged by Version")
	}
}

// The Server must work unchanged when handed a context that is already done.
func TestServeWithCancelledContext(t *testing.T) {
	f := newFake()
	fakeSock, _ := serveFake(t, f)
	sock := filepath.Join(shortDir(t), "cri.sock")
	s, err := cri.NewServer(cri.Config{Socket: sock, Backend: dialBackend(t, fakeSock), Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	c, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Serve(c); err != nil {
		t.Errorf("Serve: %v", err)
	}
	if err := s.Serve(c); err == nil {
		t.Error("second Serve succeeded")
	}
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}

// TestStopRemoveAreIdempotent: the CRI contract makes Stop/Remove of a
// sandbox or container succeed when it is already gone; containerd 1.6
// answers NotFound to some of them, so the shim answers success. Other
// errors pass through unchanged.
func TestStopRemoveAreIdempotent(t *testing.T) {
	e := newEnv(t)
	calls := map[string]func() error{
		"StopPodSandbox": func() error {
			_, err := e.rt.StopPodSandbox(ctx(t), &runtimeapi.StopPodSandboxRequest{PodSandboxId: "gone"})
			return err
		},
		"RemovePodSandbox": func() error {
			_, err := e.rt.RemovePodSandbox(ctx(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: "gone"})
			return err
		},
		"StopContainer": func() error {
			_, err := e.rt.StopContainer(ctx(t), &runtimeapi.StopContainerRequest{ContainerId: "gone"})
			return err
		},
		"RemoveContainer": func() error {
			_, err := e.rt.RemoveContainer(ctx(t), &runtimeapi.RemoveContainerRequest{ContainerId: "gone"})
			return err
		},
	}
	for method, call := range calls {
		e.fake.setErr(method, status.Error(codes.NotFound, "an ID the backend does not know"))
		if err := call(); err != nil {
			t.Errorf("%s of an unknown ID: %v, want success", method, err)
		}
		e.fake.setErr(method, status.Error(codes.Internal, "disk on fire"))
		if err := call(); status.Code(err) != codes.Internal {
			t.Errorf("%s with a backend failure: %v, want Internal passed through", method, err)
		}
	}
}
