package main

// What the demo's simulated device owns on the host. Every value differs
// from what the e2e tests, the CRI conformance tests and a real device use,
// so a demo and `make test` run side by side (issue 12).
//
// The ports are fixed (a user can find them) and lie below 20000, the
// lowest port the test control planes pick by themselves
// (tests/controlplane minPort), and below the kernel's ephemeral range.
const (
	nodeName = "eve-demo-device"

	// kubeletPort and kubeletHealthzPort replace the kubelet's 10250 and
	// 10248, which the e2e tests' devices use.
	kubeletPort        = 11250
	kubeletHealthzPort = 11248
	// metricsPort replaces the agent's 10260 (the e2e tests scrape that).
	metricsPort = 11260

	// bridgeName, networkName and podCIDR are the demo containerd's pod
	// network; host-local keeps its leases under the demo directory.
	bridgeName  = "evelet-demo0"
	networkName = "evelet-demo"
	podCIDR     = "10.244.9.0/24"

	// cgroupRoot is the demo kubelet's cgroupRoot: with cgroupfs every
	// kubelet owns <cgroupRoot>/kubepods and removes pod cgroups there
	// that it does not know, so two kubelets must not share one.
	cgroupRoot = "/evelet-demo"
)

// port is one TCP port the demo needs, and what it is for.
type port struct {
	num  int
	what string
}

var demoPorts = []port{
	{kubeletPort, "the demo kubelet's API port"},
	{kubeletHealthzPort, "the demo kubelet's healthz port"},
	{metricsPort, "the demo agent's metrics port"},
}
