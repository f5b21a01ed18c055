package cri_test

import (
	"context"
	"io"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri"
)

// benchEnv returns a client straight to the fake backend and one through
// evelet, with logging at info (the production default) so the interceptor
// costs what it costs in the field.
func benchEnv(b *testing.B) (direct, shim runtimeapi.RuntimeServiceClient) {
	f := newFake()
	fakeSock, _ := serveFake(b, f)
	l := logrus.New()
	l.SetOutput(io.Discard)
	sock := filepath.Join(shortDir(b), "cri.sock")
	startServer(b, cri.Config{Socket: sock, Backend: dialBackend(b, fakeSock), Log: logrus.NewEntry(l)})
	return runtimeapi.NewRuntimeServiceClient(dialClient(b, fakeSock)),
		runtimeapi.NewRuntimeServiceClient(dialClient(b, sock))
}

func benchCall(b *testing.B, direct, shim runtimeapi.RuntimeServiceClient, call func(context.Context, runtimeapi.RuntimeServiceClient) error) {
	for _, bc := range []struct {
		name string
		c    runtimeapi.RuntimeServiceClient
	}{{"direct", direct}, {"evelet", shim}} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			if err := call(ctx, bc.c); err != nil { // connect outside the timing
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := call(ctx, bc.c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Version through evelet costs two hops: evelet answers but checks the backend.
func BenchmarkVersionDirectVsShim(b *testing.B) {
	direct, shim := benchEnv(b)
	benchCall(b, direct, shim, func(ctx context.Context, c runtimeapi.RuntimeServiceClient) error {
		_, err := c.Version(ctx, &runtimeapi.VersionRequest{})
		return err
	})
}

// ListContainers is the kubelet's most frequent call (every PLEG relist).
func BenchmarkListContainers(b *testing.B) {
	direct, shim := benchEnv(b)
	benchCall(b, direct, shim, func(ctx context.Context, c runtimeapi.RuntimeServiceClient) error {
		_, err := c.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
		return err
	})
}
