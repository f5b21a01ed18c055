package cri

import (
	"context"
	"fmt"
	"sync"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// sandboxGate lets a caller see every sandbox with none being set up:
// RunPodSandbox holds it shared for its whole call (the runtime attaches
// the pod's networks in it, before it lists the sandbox), WithSandboxes
// exclusively.
type sandboxGate struct{ mu sync.RWMutex }

// WithSandboxes calls fn with the IDs of every pod sandbox of every backend
// (all states), while no RunPodSandbox is in flight through this server:
// what fn finds attached to a sandbox not in the list belongs to no
// sandbox, now or half made. If any backend cannot list, fn is not called.
func (s *Server) WithSandboxes(ctx context.Context, fn func(ids []string) error) error {
	s.gate.mu.Lock()
	defer s.gate.mu.Unlock()
	var ids []string
	for _, b := range s.router.Backends() {
		l, err := b.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		if err != nil {
			return fmt.Errorf("cri: listing the sandboxes of backend %s: %w", b.Name(), err)
		}
		for _, sb := range l.GetItems() {
			ids = append(ids, sb.GetId())
		}
	}
	return fn(ids)
}
