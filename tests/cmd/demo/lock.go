package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/lf-edge/evelet/internal/atomicfile"
	"golang.org/x/sys/unix"
)

// The demo's host resources (bridge, cgroup root, ports) are one per
// machine, whatever clone runs it, so the serve process holds a machine-wide
// flock for its life. A free lock proves no demo is running: whatever a
// demo left on the host (a bridge, a cgroup with pods, a killed run's
// processes) is then a leftover and `up` clears it instead of refusing. The
// kernel releases the lock when the holder dies, however it dies.
const (
	lockPath  = "/run/evelet-demo.lock"
	ownerPath = "/run/evelet-demo.json" // who holds the lock: for the refusal
)

// owner says which demo holds the machine lock.
type owner struct {
	PID int    `json:"pid"`
	Dir string `json:"dir"`
}

// hostLock is the machine-wide demo lock; the zero value means "not held".
type hostLock struct {
	lock, owner string
	f           *os.File
}

func newHostLock() *hostLock { return &hostLock{lock: lockPath, owner: ownerPath} }

// errHeld is returned by tryLock when another process holds the lock.
var errHeld = errors.New("held")

// take takes the lock without waiting and records dir as its owner.
func (l *hostLock) take(dir string) error {
	if err := l.tryLock(); err != nil {
		return err
	}
	b, _ := json.Marshal(owner{PID: os.Getpid(), Dir: dir})
	return atomicfile.WriteFile(l.owner, b, 0o644)
}

// tryLock flocks the lock file without waiting.
func (l *hostLock) tryLock() error {
	f, err := os.OpenFile(l.lock, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return errHeld
		}
		return fmt.Errorf("locking %s: %w", l.lock, err)
	}
	l.f = f
	return nil
}

// unlock releases the lock (the owner file stays; it is read only while the
// lock is held).
func (l *hostLock) unlock() {
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// held reports whether some process holds the lock now, and who.
func (l *hostLock) held() (bool, owner) {
	probe := &hostLock{lock: l.lock}
	switch err := probe.tryLock(); {
	case err == nil:
		probe.unlock()
		return false, owner{}
	case errors.Is(err, errHeld):
		var o owner
		if b, err := os.ReadFile(l.owner); err == nil {
			json.Unmarshal(b, &o)
		}
		return true, o
	default:
		// Cannot even open it (not root): not a running demo we can see.
		return false, owner{}
	}
}
