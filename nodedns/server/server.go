// Package server runs CoreDNS with the few plugins the node-local DNS
// uses (nodedns.Config.Corefile). It is what `evelet dns` runs; nothing
// else imports it, so CoreDNS is linked only where it runs.
package server

import (
	"context"
	"fmt"
	"io"
	stdlog "log"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"

	// The plugins a nodedns Corefile names, and no others: each registers
	// itself with caddy in init, and dnsserver.Directives orders them.
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/kubernetes"
)

// Plugins are the CoreDNS plugins linked in (for docs and the version line).
var Plugins = []string{"bind", "errors", "cache", "kubernetes", "forward"}

func init() {
	caddy.Quiet = true
	dnsserver.Quiet = true
}

// Run serves corefile until ctx ends. CoreDNS and its plugins log through
// the standard library's log package; out receives that.
func Run(ctx context.Context, corefile string, out io.Writer) error {
	stdlog.SetOutput(out)
	inst, err := caddy.Start(caddy.CaddyfileInput{Contents: []byte(corefile), Filepath: "Corefile", ServerTypeName: "dns"})
	if err != nil {
		return fmt.Errorf("start CoreDNS: %w", err)
	}
	stopped := make(chan struct{})
	go func() { inst.Wait(); close(stopped) }()
	select {
	case <-ctx.Done():
		if err := inst.Stop(); err != nil {
			return err
		}
		<-stopped
		return nil
	case <-stopped:
		return fmt.Errorf("CoreDNS stopped by itself")
	}
}
