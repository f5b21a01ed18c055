package vm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"

	"github.com/lf-edge/evelet/cri/vm/vmnet"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
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
	if err := newNetns(path); err != nil {
		return nil, err
	}
	return &Attachment{Netns: path}, nil
}

func (n LoopbackNetwork) Teardown(_ context.Context, sandboxID string) error {
	return removeNetns(filepath.Join(n.Dir, sandboxID))
}

// newNetns creates a network namespace with loopback up and bind-mounts it at
// path. It works on a locked thread that it throws away if it cannot go
// back to the original namespace.
func newNetns(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o400)
	if err != nil {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		err = func() error {
			self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
			if err := unix.Mount(self, path, "", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("bind-mount netns at %s: %w", path, err)
			}
			lo, err := netlink.LinkByName("lo")
			if err != nil {
				return err
			}
			return netlink.LinkSetUp(lo)
		}()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked and dies with this goroutine
		errc <- err
	}()
	if err := <-errc; err != nil {
		removeNetns(path)
		return err
	}
	return nil
}

// removeNetns unmounts and removes a netns file; gone already is fine.
func removeNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
