// Package netnstest runs a test's body in a throwaway network namespace,
// so tests of links, routes and rules never touch the host's. For tests
// only; it needs root.
package netnstest

import (
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// Run runs f on a locked OS thread in a fresh, unnamed network namespace,
// which the kernel frees once f returns (nothing named, nothing left).
// Without root the test is skipped with that reason (make test runs as
// root, and its skip rule fails an unlisted skip).
func Run(t testing.TB, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace; make test runs as root")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	defer ns.Close()
	defer func() {
		// A thread left in the test's namespace must not go back to
		// the pool: Go would run other goroutines in it.
		if err := netns.Set(orig); err != nil {
			panic(err)
		}
	}()
	f()
}
