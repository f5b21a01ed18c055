package cri_test

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri"
)

// observing is a backend that keeps something derived from images, as the
// VM backend keeps extracted disks.
type observing struct {
	cri.Backend
	removed atomic.Int32
}

func (o *observing) ImageRemoved(context.Context) { o.removed.Add(1) }

// Images live in the default backend; a backend that derives files from
// them hears of every successful removal and of no failed one.
func TestRemoveImageTellsObservers(t *testing.T) {
	ctd, vm := newFake(), newFake()
	ctdSock, _ := serveFake(t, ctd)
	vmSock, _ := serveFake(t, vm)
	obs := &observing{Backend: dialBackend(t, vmSock)}
	sock := filepath.Join(shortDir(t), "cri.sock")
	startServer(t, cri.Config{Socket: sock, Backend: dialBackend(t, ctdSock), Handlers: map[string]cri.Backend{"eve-vm": obs}, Log: quietLog()})
	im := runtimeapi.NewImageServiceClient(dialClient(t, sock))

	req := &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: "evelet.local/vm:1"}}
	if _, err := im.RemoveImage(ctx(t), req); err != nil {
		t.Fatal(err)
	}
	if ctd.count("RemoveImage") != 1 || vm.count("RemoveImage") != 0 {
		t.Errorf("RemoveImage went to containerd %d times and to the VM backend %d times, want 1 and 0", ctd.count("RemoveImage"), vm.count("RemoveImage"))
	}
	if n := obs.removed.Load(); n != 1 {
		t.Errorf("observer told %d times after a removal, want 1", n)
	}

	ctd.setErr("RemoveImage", status.Error(codes.Internal, "disk on fire"))
	if _, err := im.RemoveImage(ctx(t), req); status.Code(err) != codes.Internal {
		t.Fatalf("failed removal: %v, want the backend's Internal error", err)
	}
	if n := obs.removed.Load(); n != 1 {
		t.Errorf("observer told %d times after a failed removal, want still 1", n)
	}
}
