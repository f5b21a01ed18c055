package cri_test

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri"
	"github.com/lf-edge/evelet/cri/containerd"
)

// env is evelet's Server in front of a fake backend, with a client on each.
type env struct {
	fake     *fake
	fakeSock string
	stopFake func()
	sock     string // evelet's socket
	rt       runtimeapi.RuntimeServiceClient
	im       runtimeapi.ImageServiceClient
	stop     func() error // cancels Serve and returns its result
	srv      *cri.Server
}

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.DebugLevel) // exercise the logging interceptors
	return logrus.NewEntry(l)
}

func newEnv(t testing.TB) *env { return newEnvWith(t, nil) }

// newEnvWith is newEnv with the server's Config adjusted by mod.
func newEnvWith(t testing.TB, mod func(*cri.Config)) *env {
	t.Helper()
	e := &env{fake: newFake()}
	e.fakeSock, e.stopFake = serveFake(t, e.fake)
	b := dialBackend(t, e.fakeSock)
	e.sock = filepath.Join(shortDir(t), "run", "cri.sock")
	cfg := cri.Config{Socket: e.sock, Backend: b, Log: quietLog()}
	if mod != nil {
		mod(&cfg)
	}
	e.srv, e.stop = serve(t, cfg)
	conn := dialClient(t, e.sock)
	e.rt = runtimeapi.NewRuntimeServiceClient(conn)
	e.im = runtimeapi.NewImageServiceClient(conn)
	e.fake.reset() // forget Dial's Version probe
	return e
}

func dialBackend(t testing.TB, sock string) cri.Backend {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := containerd.Dial(ctx, "unix://"+sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// startServer runs Serve in the background until the returned stop is
// called (or the test ends) and waits for the socket to answer.
func startServer(t testing.TB, cfg cri.Config) (stop func() error) {
	t.Helper()
	_, stop = serve(t, cfg)
	return stop
}

// serve is startServer that also returns the Server.
func serve(t testing.TB, cfg cri.Config) (_ *cri.Server, stop func() error) {
	t.Helper()
	s, err := cri.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()
	stopped := false
	var result error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case result = <-served:
			case <-time.After(10 * time.Second):
				t.Error("Serve did not return after cancel")
			}
		}
		return result
	}
	t.Cleanup(func() { stop() })
	waitForSocket(t, cfg.Socket, served)
	return s, stop
}

// waitForSocket waits until something accepts connections on sock; a stale
// socket file refuses them, so this also works when one was there before.
func waitForSocket(t testing.TB, sock string, served chan error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-served:
			t.Fatalf("Serve returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("evelet socket %s never answered: %v", sock, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// dialClient connects like the kubelet does: plain gRPC over the unix socket, 16 MiB limits.
func dialClient(t testing.TB, sock string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
