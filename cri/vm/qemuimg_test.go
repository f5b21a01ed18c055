package vm

import (
	"context"
	"strings"
	"testing"
)

// TestQEMUImgRunsUnderLimits: what qemu-img runs as has the address-space
// and CPU-time limits (issue 21 item 11), and arguments reach it verbatim
// (a path with shell syntax in it is one argument, not a command).
func TestQEMUImgRunsUnderLimits(t *testing.T) {
	out, err := limitedCommand(context.Background(), qemuImgInfoCPUSeconds, "/bin/cat", "/proc/self/limits").Output()
	if err != nil {
		t.Fatal(err)
	}
	var as, cpu string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		switch {
		case strings.HasPrefix(l, "Max address space") && len(f) > 4:
			as = f[3]
		case strings.HasPrefix(l, "Max cpu time") && len(f) > 4:
			cpu = f[3]
		}
	}
	if as != "1073741824" || cpu != "30" {
		t.Errorf("qemu-img's limits: address space %q, CPU time %q; want 1073741824 and 30\n%s", as, cpu, out)
	}
	echo, err := limitedCommand(context.Background(), 1, "/bin/echo", "a;b", "$(touch /tmp/x)", "c d").Output()
	if err != nil || string(echo) != "a;b $(touch /tmp/x) c d\n" {
		t.Errorf("arguments through the limits: %q %v", echo, err)
	}
}
