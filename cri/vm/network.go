package vm

import (
	"context"
	"path/filepath"

	"github.com/lf-edge/evelet/cri/vm/vmnet"
)

// Network gives a VM pod its network namespace and interfaces: cri/vm/vmnet
// (CNI, the same conflist as container pods), or LoopbackNetwork.
type Network interface {
	// Setup creates the sandbox's netns and its interfaces.
	Setup(ctx context.Context, sandboxID string, pod PodMeta) (*Attachment, error)
	// Teardown undoes Setup; it is idempotent.
	Teardown(ctx context.Context, sandboxID string) error
}

// The types are vmnet's: *vmnet.Network is the Network of a node with
// pod networking.
type (
	PodMeta    = vmnet.PodMeta
	Attachment = vmnet.Attachment
	NIC        = vmnet.NIC
)

var _ Network = (*vmnet.Network)(nil)

// LoopbackNetwork makes a netns with only loopback in it, bind-mounted at
// Dir/<sandbox-id>: a VM pod without pod networking (no NICs). It stands in
// where no CNI-backed Network is configured.
type LoopbackNetwork struct{ Dir string }

var _ Network = LoopbackNetwork{}

func (n LoopbackNetwork) Setup(_ context.Context, sandboxID string, _ PodMeta) (*Attachment, error) {
	path := filepath.Join(n.Dir, sandboxID)
	if err := vmnet.CreateLoopbackNetns(path); err != nil {
		return nil, err
	}
	return &Attachment{Netns: path}, nil
}

func (n LoopbackNetwork) Teardown(_ context.Context, sandboxID string) error {
	return vmnet.RemoveNetns(filepath.Join(n.Dir, sandboxID))
}
