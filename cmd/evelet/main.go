// Command evelet is the multi-call binary that runs on the EVE device:
//
//	evelet agent    the supervisor (join, CRI shim, kubelet child)
//	evelet cri      the CRI shim alone (debugging, benchmarks)
//	evelet doctor   preflight and diagnosis
//	evelet status   what the agent is doing
//	evelet version  evelet's and the vendored kubelet's versions
//
// and, handed on to the role binaries beside it, which hold the vendored
// Kubernetes code, one process each (internal/nodebin):
//
//	evelet kubelet     evelet-kubelet, the vendored kubelet (started by the agent)
//	evelet kube-proxy  evelet-kube-proxy, the vendored kube-proxy (started by the agent)
//	evelet dns         evelet-dns, the node-local DNS server (started by the agent)
//	evelet vmm         evelet-vmm, the supervisor of one VM pod's QEMU (started by the CRI shim)
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/lf-edge/evelet/internal/nodebin"
)

var commands = map[string]func(args []string) int{
	"agent":   runAgent,
	"cri":     runCRI,
	"doctor":  runDoctor,
	"status":  runStatus,
	"version": runVersion,
}

func init() {
	for _, r := range nodebin.Roles {
		commands[r] = nodeRole(r)
	}
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: evelet <agent|kubelet|kube-proxy|dns|cri|doctor|status|version|vmm> [flags]\n")
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	// Multi-call: a symlink named after a command runs that command.
	if _, ok := commands[name]; !ok || name == "evelet" {
		if len(args) == 0 {
			usage()
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	run, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "evelet: unknown command %q\n", name)
		usage()
		os.Exit(2)
	}
	os.Exit(run(args))
}
