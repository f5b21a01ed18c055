package cri_test

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"runtime"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/wait"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri"
)

// slowRun is a backend whose RunPodSandbox waits until released: a
// sandbox being set up (its networks attached) and not listed yet.
type slowRun struct {
	cri.Backend
	entered, release chan struct{}
}

func (s *slowRun) RunPodSandbox(ctx context.Context, req *runtimeapi.RunPodSandboxRequest, opts ...grpc.CallOption) (*runtimeapi.RunPodSandboxResponse, error) {
	s.entered <- struct{}{}
	<-s.release
	return s.Backend.RunPodSandbox(ctx, req, opts...)
}

// WithSandboxes lists the sandboxes of every backend, never while a
// RunPodSandbox is in flight, and not at all when a backend cannot list.
func TestWithSandboxes(t *testing.T) {
	ctd, vm := newFake(), newFake()
	ctdSock, _ := serveFake(t, ctd)
	vmSock, _ := serveFake(t, vm)
	slow := &slowRun{Backend: dialBackend(t, ctdSock), entered: make(chan struct{}, 1), release: make(chan struct{})}
	sock := filepath.Join(shortDir(t), "cri.sock")
	srv, _ := serve(t, cri.Config{Socket: sock, Backend: slow, Handlers: map[string]cri.Backend{"eve-vm": dialBackend(t, vmSock)}, Log: quietLog()})
	rt := runtimeapi.NewRuntimeServiceClient(dialClient(t, sock))
	vm.setResponse("ListPodSandbox", &runtimeapi.ListPodSandboxResponse{Items: []*runtimeapi.PodSandbox{{Id: "vm-1"}}})

	var got []string
	if err := srv.WithSandboxes(ctx(t), func(ids []string) error { got = ids; return nil }); err != nil {
		t.Fatal(err)
	}
	sort.Strings(got)
	if want := []string{"sb-1", "sb-2", "vm-1"}; !reflect.DeepEqual(got, want) {
		t.Errorf("sandboxes %v, want %v (both backends)", got, want)
	}

	// A RunPodSandbox in flight holds the list back until it returns: the
	// listing starts while the run is held in the backend, and when it
	// lists the run has returned.
	ran := make(chan error, 1)
	go func() {
		_, err := rt.RunPodSandbox(context.Background(), &runtimeapi.RunPodSandboxRequest{Config: plainPod()})
		ran <- err
	}()
	<-slow.entered
	var runDone atomic.Bool
	listed := make(chan bool, 1)
	go func() {
		srv.WithSandboxes(context.Background(), func([]string) error { listed <- runDone.Load(); return nil })
	}()
	// Wait until the listing is blocked on the gate (its goroutine parked
	// in the lock), then let the run finish.
	err := wait.PollUntilContextTimeout(ctx(t), 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		buf := make([]byte, 1<<20)
		st := string(buf[:runtime.Stack(buf, true)])
		return strings.Contains(st, "(*RWMutex).Lock") && strings.Contains(st, "cri.(*Server).WithSandboxes"), nil
	})
	if err != nil {
		t.Fatal("the listing never waited on the gate: it ran during the RunPodSandbox, or never started")
	}
	runDone.Store(true) // before the release: the run returns only after it
	close(slow.release)
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	select {
	case done := <-listed:
		if !done {
			t.Error("sandboxes listed while a RunPodSandbox was in flight")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("sandboxes not listed after the RunPodSandbox returned")
	}

	vm.setErr("ListPodSandbox", status.Error(codes.Unavailable, "qemu state unreadable"))
	called := false
	err = srv.WithSandboxes(ctx(t), func([]string) error { called = true; return nil })
	if called || err == nil || status.Code(errors.Unwrap(err)) != codes.Unavailable {
		t.Errorf("a backend that cannot list: fn called %v, err %v; want no call and its error", called, err)
	}
}
