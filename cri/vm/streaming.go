package vm

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri/vm/stream"
	"github.com/lf-edge/evelet/cri/vm/vmm"
)

// DefaultStreamAddr is where the VM backend's CRI streaming server listens:
// loopback, as containerd's; the kubelet proxies kubectl's streams to it.
const DefaultStreamAddr = "127.0.0.1:0"

// startStreaming starts the streaming server for exec and attach (package
// cri/vm/stream). Its listener is open before any URL is handed out.
func (b *Backend) startStreaming(addr string) error {
	b.streamRT = stream.New(b.locate, b.log)
	srv, hs, err := stream.Serve(addr, b.streamRT, b.log)
	if err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	b.stream, b.httpSrv = srv, hs
	return nil
}

// locate gives the stream package a running container's sockets.
func (b *Backend) locate(id string) (stream.Paths, error) {
	c, err := b.store.container(id)
	if err != nil {
		return stream.Paths{}, lookupErr("container", id, err)
	}
	if !b.running(c) {
		return stream.Paths{}, status.Errorf(codes.FailedPrecondition, "container %s is not running", id)
	}
	dir := b.store.containerDir(id)
	return stream.Paths{QGASocket: filepath.Join(dir, qgaSocket), ConsoleSocket: filepath.Join(dir, vmm.ConsoleSocket)}, nil
}

func (b *Backend) ExecSync(ctx context.Context, req *runtimeapi.ExecSyncRequest, _ ...grpc.CallOption) (*runtimeapi.ExecSyncResponse, error) {
	if _, err := b.locate(req.GetContainerId()); err != nil {
		return nil, err
	}
	return b.streamRT.ExecSync(ctx, req.GetContainerId(), req.GetCmd(), time.Duration(req.GetTimeout())*time.Second)
}

func (b *Backend) Exec(ctx context.Context, req *runtimeapi.ExecRequest, _ ...grpc.CallOption) (*runtimeapi.ExecResponse, error) {
	if _, err := b.locate(req.GetContainerId()); err != nil {
		return nil, err
	}
	if req.GetTty() {
		return nil, status.Error(codes.InvalidArgument, stream.ErrTTY.Error())
	}
	return b.stream.GetExec(req)
}

func (b *Backend) Attach(ctx context.Context, req *runtimeapi.AttachRequest, _ ...grpc.CallOption) (*runtimeapi.AttachResponse, error) {
	if _, err := b.locate(req.GetContainerId()); err != nil {
		return nil, err
	}
	return b.stream.GetAttach(req)
}
