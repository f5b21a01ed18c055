package proc

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadStatSelf(t *testing.T) {
	s, ok := ReadStat(os.Getpid())
	if !ok || s.PPID != os.Getppid() || s.State == 0 {
		t.Fatalf("ReadStat(self) = %+v, %v; want ppid %d", s, ok, os.Getppid())
	}
	if _, ok := ReadStat(1 << 30); ok {
		t.Fatal("ReadStat of a pid that cannot exist succeeded")
	}
}

func TestTailLinesSinceMarker(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	os.WriteFile(p, []byte("old\n--- start\nnew one\n"+strings.Repeat("x", 50)+"\n"), 0o644)
	lines, err := TailLines(p, "--- start", 1<<20, 10)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"--- start", "new one", "xxxxxxxxxx [...]"}
	if strings.Join(lines, "|") != strings.Join(want, "|") {
		t.Fatalf("lines = %q, want %q", lines, want)
	}
}
