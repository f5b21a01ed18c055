// Command evelet-kubelet is the vendored kubelet with evelet's volume guards
// (kubelet-shim/kubeletcmd). The agent starts it as `evelet-kubelet kubelet
// <flags>` from beside its own binary; `evelet kubelet` hands on to it.
package main

import (
	"os"

	"github.com/lf-edge/evelet/internal/nodebin"
	"github.com/lf-edge/evelet/kubelet-shim/kubeletcmd"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json, as in the stock kubelet
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics on /metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // build info metric
)

func main() {
	os.Exit(kubeletcmd.Run(nodebin.Args("kubelet")))
}
