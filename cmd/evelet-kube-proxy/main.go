// Command evelet-kube-proxy is the vendored kube-proxy, unchanged, as its
// own main runs it (cmd/kube-proxy/proxy.go). The agent starts it as
// `evelet-kube-proxy kube-proxy --config=...` with the configuration
// kubeproxy.Options writes; `evelet kube-proxy` hands on to it.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-proxy/app"

	"github.com/lf-edge/evelet/internal/nodebin"
)

func main() {
	cmd := app.NewProxyCommand()
	cmd.SetArgs(nodebin.Args("kube-proxy"))
	os.Exit(cli.Run(cmd))
}
