// Package cri is evelet's CRI server: the kubelet talks CRI v1 to it over a
// unix socket, and it forwards each call to the backend that owns the pod
// (for now only containerd's own CRI). It is also where the EVE guardrail
// policy will sit, because every pod the kubelet runs passes through here.
package cri
