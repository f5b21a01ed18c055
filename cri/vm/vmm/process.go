package vmm

import (
	"bytes"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ProcessAlive says whether pid runs and its command line mentions marker
// (the container directory), so a recycled pid is not mistaken for ours.
func ProcessAlive(pid int, marker string) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	if !bytes.Contains(b, []byte(marker)) {
		return false
	}
	// A zombie is not alive.
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err == nil {
		if i := bytes.LastIndexByte(st, ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
			return false
		}
	}
	return unix.Kill(pid, 0) == nil
}
