package cgroups

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A root made in every hierarchy, with a child cgroup below it, is removed
// deepest first; nothing of it is left.
func TestMakeAndRemoveRoot(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("creating cgroups needs root")
	}
	name := fmt.Sprintf("/evelet-cgtest-%d", os.Getpid())
	if len(Dirs(name)) == 0 {
		t.Skip("no cgroup hierarchies under " + Mount)
	}
	t.Cleanup(func() { RemoveRoot(name, 5*time.Second) })
	if err := MakeRoot(name); err != nil {
		t.Fatal(err)
	}
	if got, want := len(Existing(name)), len(Dirs(name)); got != want {
		t.Fatalf("root exists in %d of %d hierarchies", got, want)
	}
	child := filepath.Join(Dirs(name)[0], "pod1")
	if err := os.Mkdir(child, 0o755); err != nil {
		t.Fatal(err)
	}
	if pids := PIDs(Dirs(name)...); len(pids) != 0 {
		t.Fatalf("fresh cgroups hold processes %v", pids)
	}
	if err := RemoveRoot(name, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if left := Existing(name); len(left) != 0 {
		t.Fatalf("left after RemoveRoot: %v", left)
	}
}
