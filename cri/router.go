package cri

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Router picks the backend for a call. New sandboxes are routed by their
// RuntimeClass handler; calls that name an existing sandbox or container ask
// the backends who owns it. It deliberately holds no pod->backend map: the
// backends are the source of truth, so nothing is lost when evelet restarts.
type Router struct {
	def      Backend
	handlers map[string]Backend
	all      []Backend // def first, each backend once
}

// NewRouter routes RuntimeClass handlers listed in handlers to their backend
// and everything else, including the empty handler, to def. Unknown handlers
// go to def on purpose: containerd knows its own runtimes (runc, ...) and
// gives the kubelet the proper error for ones it does not.
func NewRouter(def Backend, handlers map[string]Backend) (*Router, error) {
	if def == nil {
		return nil, errors.New("cri: router needs a default backend")
	}
	r := &Router{def: def, handlers: map[string]Backend{}, all: []Backend{def}}
	for h, b := range handlers {
		if b == nil {
			return nil, fmt.Errorf("cri: nil backend for runtime handler %q", h)
		}
		r.handlers[h] = b
		if !r.has(b) {
			r.all = append(r.all, b)
		}
	}
	return r, nil
}

func (r *Router) has(b Backend) bool {
	for _, x := range r.all {
		if x == b {
			return true
		}
	}
	return false
}

// Default is the backend for images, runtime-wide settings and unclaimed IDs.
func (r *Router) Default() Backend { return r.def }

// Backends lists every backend once, the default first.
func (r *Router) Backends() []Backend { return r.all }

// ForHandler returns the backend for a new sandbox of the given RuntimeClass handler.
func (r *Router) ForHandler(handler string) Backend {
	if b, ok := r.handlers[handler]; ok {
		return b
	}
	return r.def
}

// ForSandbox returns the backend that owns the pod sandbox id.
func (r *Router) ForSandbox(ctx context.Context, id string) (Backend, error) {
	return r.owner(func(b Backend) error {
		_, err := b.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id})
		return err
	})
}

// ForContainer returns the backend that owns the container id.
func (r *Router) ForContainer(ctx context.Context, id string) (Backend, error) {
	return r.owner(func(b Backend) error {
		_, err := b.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		return err
	})
}

// owner asks each non-default backend whether it knows the object. With one
// backend it asks nobody, so the single-backend path costs no extra RPC. An
// ID nobody claims goes to the default backend, so that its own semantics
// apply (NotFound for status, success for an idempotent remove). Any other
// error stops the search: guessing could tell the kubelet that a live pod of
// an unreachable backend is gone.
func (r *Router) owner(probe func(Backend) error) (Backend, error) {
	for _, b := range r.all[1:] {
		err := probe(b)
		if err == nil {
			return b, nil
		}
		if status.Code(err) != codes.NotFound {
			return nil, err
		}
	}
	return r.def, nil
}
