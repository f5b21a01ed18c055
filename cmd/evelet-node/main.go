// Command evelet-node runs the device's processes that are vendored
// Kubernetes code, one per invocation:
//
//	evelet-node kubelet     the vendored kubelet, with evelet's volume guards
//	evelet-node kube-proxy  the vendored kube-proxy (nftables mode)
//	evelet-node dns         the node-local DNS server (CoreDNS plugins)
//	evelet-node version     evelet's and the vendored kubelet's versions
//
// The agent (`evelet agent`) starts each from the evelet-node binary next to
// its own (internal/nodebin); `evelet kubelet` and the others hand on to it.
// It is a binary of its own so the agent, the CRI shim and every per-VM
// supervisor do not link, load and initialise the kubelet (docs/architecture.md).
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/lf-edge/evelet/version"
)

var commands = map[string]func(args []string) int{
	"kubelet":    runKubelet,
	"kube-proxy": runKubeProxy,
	"dns":        runDNS,
	"version": func([]string) int {
		fmt.Println(version.String())
		return 0
	},
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: evelet-node <kubelet|kube-proxy|dns|version> [flags]\n")
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	// Multi-call: a symlink named after a command runs that command.
	if _, ok := commands[name]; !ok {
		if len(args) == 0 {
			usage()
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	run, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "evelet-node: unknown command %q\n", name)
		usage()
		os.Exit(2)
	}
	os.Exit(run(args))
}
