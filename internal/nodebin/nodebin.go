// Package nodebin names the role binaries: one per process the agent runs
// besides itself (evelet-kubelet, evelet-kube-proxy, evelet-dns, and
// evelet-vmm, one per running VM), installed beside the evelet binary,
// where the agent finds them. Each process loads and initialises only its
// own code: linked with the rest, the DNS server's RSS was 72 MB instead of
// 38 MB, kube-proxy's 80 MB instead of 62 MB, a VM's supervisor 88 MB
// instead of 9 MB (docs/benchmarks.md, footprint).
package nodebin

import (
	"os"
	"path/filepath"
)

// Roles are the processes that run from a role binary; `evelet <role>`
// hands on to it.
var Roles = []string{"kubelet", "kube-proxy", "dns", "vmm"}

// Name is the file name of role's binary.
func Name(role string) string { return "evelet-" + role }

// Path is role's binary beside self (the agent's os.Executable).
func Path(self, role string) string { return filepath.Join(filepath.Dir(self), Name(role)) }

// Args are a role binary's arguments. The agent runs it as `evelet-<role>
// <role> args...`, so the process's command line names its role in the
// same place as `evelet <role>` did; the role word is optional.
func Args(role string) []string {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == role {
		args = args[1:]
	}
	return args
}
