// Package cri is evelet's CRI server: the kubelet talks CRI v1 to it over a
// unix socket, and it forwards each call to the backend that owns the pod
// (for now only containerd's own CRI). Every pod the kubelet runs passes
// through here, so this is also where the EVE guardrail policy (package
// policy) is enforced: RunPodSandbox and CreateContainer are checked
// before anything reaches a backend. Metrics (NewMetrics) count and time
// every call.
package cri
