package main

import (
	"github.com/lf-edge/evelet/kubelet-shim/kubeletcmd"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json, as in the stock kubelet
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics on /metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // build info metric
)

// runKubelet runs the vendored kubelet with evelet's guards in its
// dependencies (kubelet-shim/kubeletcmd.Run).
func runKubelet(args []string) int {
	return kubeletcmd.Run(args)
}
