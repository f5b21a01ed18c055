package vm

import (
	"context"
	"fmt"
	"os/exec"
)

// qemu-img parses the tenant's disk images (qcow2 headers and tables are
// the image author's), so it runs with the limits OpenStack gives it since
// CVE-2015-5162 (a crafted image made qemu-img info take gigabytes and
// minutes): 1 GiB of address space and 30 s of CPU time; the overlay and
// the check get the same address space and more CPU time, since they walk
// the image's tables.
const (
	qemuImgAddressSpaceKiB = 1 << 20 // 1 GiB
	qemuImgInfoCPUSeconds  = 30
	qemuImgCheckCPUSeconds = 120
)

// limitedCommand runs bin with args under RLIMIT_AS and RLIMIT_CPU. Go's
// os/exec cannot set rlimits between fork and exec, and setting them on a
// started process leaves a window, so a POSIX shell sets them and execs
// bin (dash and busybox ash both have ulimit -v and -t; util-linux's
// prlimit is not on every device). bin and args pass as positional
// parameters, never through the shell's parser.
func limitedCommand(ctx context.Context, cpuSeconds int, bin string, args ...string) *exec.Cmd {
	script := fmt.Sprintf(`ulimit -v %d && ulimit -t %d && exec "$0" "$@"`, qemuImgAddressSpaceKiB, cpuSeconds)
	return exec.CommandContext(ctx, "/bin/sh", append([]string{"-c", script, bin}, args...)...)
}
