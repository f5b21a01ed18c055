// Command evelet-dns is the node-local DNS server: CoreDNS with the plugins
// nodedns/server links. The agent starts it as `evelet-dns dns <Corefile>`
// (agent/nodedns.go); `evelet dns` hands on to it.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/lf-edge/evelet/internal/nodebin"
	"github.com/lf-edge/evelet/nodedns/server"
)

func main() { os.Exit(runDNS(nodebin.Args("dns"))) }

func runDNS(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: evelet-dns [dns] <Corefile>")
		return 2
	}
	corefile, err := os.ReadFile(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "evelet dns:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := server.Run(ctx, string(corefile), os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "evelet dns:", err)
		return 1
	}
	return 0
}
