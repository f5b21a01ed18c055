package vm

import (
	"errors"
)

// QEMU runs as a uid and gid of its own per VM, from this range. A QEMU
// escape then holds only what that QEMU had open: its container directory
// is root's (0700), and no other VM's QEMU shares its uid (same uid would
// mean it could ptrace or signal it). The range lies above 2^31-1, the
// largest runAsUser/runAsGroup the Kubernetes API accepts, and far above
// what the kubelet gives user-namespaced pods (blocks of 65536 from 65536
// up, lowest first; 2^23 covers a device's pods many times over). A
// container image may still name such a uid in USER; that does not reach
// QEMU either: the container is in another PID namespace and the files are
// root's. docs/vm-pods.md has the whole argument.
const (
	FirstVMUID = 3_000_000_000
	VMUIDCount = 65536
)

// giveUID gives c the lowest uid of the range that no other container of
// the backend holds, and saves c; a container keeps its uid until it is
// removed (its QEMU is dead by then: removal kills the VM's cgroup).
func (b *Backend) giveUID(c *containerState) error {
	if c.UID != 0 {
		return nil
	}
	b.uidMu.Lock()
	defer b.uidMu.Unlock()
	all, err := b.store.containers()
	if err != nil {
		return err
	}
	used := map[uint32]bool{}
	for _, o := range all {
		if o.ID != c.ID && o.UID != 0 {
			used[o.UID] = true
		}
	}
	for u := uint32(FirstVMUID); u < FirstVMUID+VMUIDCount; u++ {
		if !used[u] {
			// Saved before the lock is let go: the next VM must see it.
			c.UID = u
			return b.store.saveContainer(c)
		}
	}
	return errors.New("every VM uid is taken")
}
