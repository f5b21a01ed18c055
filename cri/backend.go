package cri

import (
	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Backend is something that runs pods: containerd's CRI (cri/containerd)
// or the QEMU VM backend (cri/vm). Speaking the CRI client interfaces keeps the shim a thin
// forwarder and lets a remote CRI endpoint be a backend with no adapter.
//
// A backend must be able to answer, from its own state, whether it owns a
// sandbox or container (PodSandboxStatus/ContainerStatus returning NotFound
// when it does not): the Router keeps no state of its own, so that after a
// restart it can rebuild ownership from the backends.
type Backend interface {
	// Name identifies the backend in logs and errors, e.g. "containerd".
	Name() string
	runtimeapi.RuntimeServiceClient
	runtimeapi.ImageServiceClient
	// Close releases the connection; it does not stop the backend's pods.
	Close() error
}

// PodChecker is a backend with rules of its own on the pod spec (VM pods:
// what a guest cannot be given is refused, not dropped). The shim calls it
// with the pod as the apiserver has it before the backend's RunPodSandbox;
// a *policy.Violation is refused as the guardrails' are.
type PodChecker interface {
	CheckPod(pod *corev1.Pod) error
}
