package vmnet

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The helpers below create and remove a network namespace pinned by a bind
// mount at a path of our choosing. vishvananda/netns.NewNamed does the same
// but only under the fixed /run/netns, and the contract wants the namespace
// under the backend's own NetnsDir, so this is the same few syscalls with a
// path parameter.

// createNetns makes a new network namespace and bind-mounts it at path. The
// work happens on a locked thread that goes back to its namespace before it
// is unlocked. (Letting the goroutine exit locked is not enough: if it ran
// on the main thread, Go cannot end that thread and parks it, still in the
// new namespace, which then lives as long as the process.)
func createNetns(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return err
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
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		err = unix.Mount(src, path, "none", unix.MS_BIND, "")
		if err != nil {
			err = fmt.Errorf("bind-mount netns at %s: %w", path, err)
		}
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked and ends with this goroutine
		errc <- err
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// removeNetns unmounts and deletes a namespace pinned at path. A missing path
// or a path that is no longer a mount point is not an error (idempotent).
func removeNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", path, err)
	}
	return nil
}

// isNetns tells whether path is a mounted network namespace.
func isNetns(path string) bool {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return false
	}
	defer h.Close()
	var st unix.Statfs_t
	if unix.Fstatfs(int(h), &st) != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// inNetns runs fn on a thread that has joined the namespace at path. Needed
// for what netlink handles cannot do from outside: creating a tap (the tun
// driver puts it in the namespace of the thread that opens /dev/net/tun) and
// opening sockets that must live in the namespace.
func inNetns(path string, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		ferr := fn()
		if netns.Set(orig) == nil {
			// Back home: the thread may serve other goroutines again.
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// CreateLoopbackNetns creates a network namespace pinned at path with only
// loopback in it, up: the netns of a VM pod without pod networking.
func CreateLoopbackNetns(path string) error {
	if err := createNetns(path); err != nil {
		return err
	}
	err := inNetns(path, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	if err != nil {
		removeNetns(path)
		return fmt.Errorf("loopback in netns %s: %w", path, err)
	}
	return nil
}

// RemoveNetns unmounts and deletes a namespace pinned at path; gone already
// is fine.
func RemoveNetns(path string) error { return removeNetns(path) }

// handleAt opens a netlink handle in the network namespace at path. Its
// sockets stay in that namespace; the namespace fd is needed only to make
// them.
func handleAt(path string) (*netlink.Handle, error) {
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer nsh.Close()
	return netlink.NewHandleAt(nsh)
}
