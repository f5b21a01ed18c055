package vmnet

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
)

// A VM pod without pod networking gets a namespace with loopback up, and
// removing it twice is fine.
func TestLoopbackNetns(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("creating a network namespace needs root")
	}
	path := filepath.Join(t.TempDir(), "netns", "sb1")
	if err := CreateLoopbackNetns(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { RemoveNetns(path) })
	if !isNetns(path) {
		t.Fatalf("%s is not a mounted network namespace", path)
	}
	var up bool
	var names []string
	err := inNetns(path, func() error {
		links, err := netlink.LinkList()
		for _, l := range links {
			names = append(names, l.Attrs().Name)
			if l.Attrs().Name == "lo" {
				up = l.Attrs().RawFlags&1 != 0 // IFF_UP
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !up || len(names) != 1 {
		t.Fatalf("links %v, lo up %v; want only lo, up", names, up)
	}
	for i := 0; i < 2; i++ {
		if err := RemoveNetns(path); err != nil {
			t.Fatalf("remove #%d: %v", i+1, err)
		}
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("%s still there: %v", path, err)
	}
}
