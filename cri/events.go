package cri

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// GetContainerEvents relays the backends' event streams to the kubelet (the
// "evented PLEG"). It ends when the kubelet goes away, when a backend stream
// fails (with that backend's error, so Unimplemented from a runtime without
// events reaches the kubelet, which then falls back to polling), when all
// backend streams have ended, or when the server shuts down.
func (s *runtimeService) GetContainerEvents(req *runtimeapi.GetEventsRequest, stream grpc.ServerStreamingServer[runtimeapi.ContainerEventResponse]) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()

	backends := s.r.Backends()
	if len(backends) == 1 {
		noteBackend(stream.Context(), backends[0].Name())
	} else {
		noteBackend(stream.Context(), BackendAll)
	}
	events := make(chan *runtimeapi.ContainerEventResponse)
	done := make(chan error, len(backends)) // buffered: senders never block after we return
	for _, b := range backends {
		go func() { done <- pumpEvents(ctx, b, req, events) }()
	}
	// Only this goroutine calls Send: a grpc stream is not safe for concurrent sends.
	for running := len(backends); running > 0; {
		select {
		case ev := <-events:
			if err := stream.Send(ev); err != nil {
				return err
			}
		case err := <-done:
			if err != nil {
				return err
			}
			running--
		case <-s.stopping:
			// Without this, GracefulStop would wait out its whole grace period
			// for a stream that never ends; the kubelet simply re-subscribes.
			return status.Error(codes.Unavailable, "evelet CRI server is shutting down")
		}
	}
	return nil
}

// pumpEvents copies one backend's event stream into out until it ends.
func pumpEvents(ctx context.Context, b Backend, req *runtimeapi.GetEventsRequest, out chan<- *runtimeapi.ContainerEventResponse) error {
	src, err := b.GetContainerEvents(ctx, req)
	if err != nil {
		return err
	}
	for {
		ev, err := src.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case out <- ev:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}
