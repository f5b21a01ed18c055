package main

import (
	"fmt"
	"os"
	"syscall"

	"github.com/lf-edge/evelet/internal/nodebin"
)

// nodeRole is `evelet kubelet`, `evelet kube-proxy` and `evelet dns`: those
// run from their own binaries beside this one (evelet-kubelet, ...), so
// that this binary (the agent, the CRI shim, every VM's supervisor) does
// not carry the kubelet.
// The process is replaced, so its pid, signals and exit status are the
// role's own, as before the split.
func nodeRole(role string) func(args []string) int {
	return func(args []string) int {
		self, err := os.Executable()
		if err != nil {
			fmt.Fprintf(os.Stderr, "evelet %s: cannot find own binary: %v\n", role, err)
			return 1
		}
		bin := nodebin.Path(self, role)
		err = syscall.Exec(bin, append([]string{bin, role}, args...), os.Environ())
		fmt.Fprintf(os.Stderr, "evelet %s: %v (the %s runs from %s, installed next to evelet)\n", role, err, role, bin)
		return 1
	}
}
