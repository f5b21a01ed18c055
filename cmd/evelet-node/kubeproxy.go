package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

// runKubeProxy (`evelet-node kube-proxy`) is the vendored kube-proxy, unchanged, as its own main runs
// it (cmd/kube-proxy/proxy.go); the agent starts it with the configuration
// kubeproxy.Options writes.
func runKubeProxy(args []string) int {
	cmd := app.NewProxyCommand()
	cmd.SetArgs(args)
	return cli.Run(cmd)
}
