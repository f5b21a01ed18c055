// Package cri is evelet's CRI server: the kubelet talks CRI v1 to it over a
// unix socket, and it forwards each call to the backend that owns the pod:
// containerd's own CRI (cri/containerd) for container pods, the QEMU VM
// backend (cri/vm) for pods of RuntimeClass handler eve-vm, routed by the
// Router from the RuntimeClass handler. Every pod the kubelet runs passes
// through here, so this is also where the EVE guardrail policy (package
// policy) is enforced: RunPodSandbox and CreateContainer are checked
// before anything reaches a backend. Metrics (NewMetrics) count and time
// every call.
package cri
