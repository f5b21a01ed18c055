package cri

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// PodSource gives the shim the pod a sandbox is for, as the apiserver has
// it: the spec-level guardrails (policy.PodSpecRules) need what the CRI
// request does not carry (probes, lifecycle handlers, volumes).
type PodSource interface {
	Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
}

// podLookupTimeout bounds the apiserver read in RunPodSandbox; the kubelet
// retries a failed sandbox with back-off.
const podLookupTimeout = 10 * time.Second

// KubeconfigPods reads pods with the node's own credentials (the kubelet's
// kubeconfig): the Node authorizer lets a node read the pods bound to it,
// and nothing else. The client is rebuilt when the kubeconfig file changes
// (a new join); the client certificate it names is re-read by client-go
// when the kubelet rotates it.
type KubeconfigPods struct {
	Path string

	mu     sync.Mutex
	client kubernetes.Interface
	stamp  string // mtime and size of the kubeconfig the client was built from
}

func (k *KubeconfigPods) clientset() (kubernetes.Interface, error) {
	fi, err := os.Stat(k.Path)
	if err != nil {
		return nil, fmt.Errorf("node kubeconfig: %w", err)
	}
	stamp := fmt.Sprintf("%d/%d", fi.ModTime().UnixNano(), fi.Size())
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.client != nil && k.stamp == stamp {
		return k.client, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", k.Path)
	if err != nil {
		return nil, fmt.Errorf("node kubeconfig %s: %w", k.Path, err)
	}
	cfg.UserAgent = "evelet-cri"
	cfg.Timeout = podLookupTimeout
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	k.client, k.stamp = cs, stamp
	return cs, nil
}

func (k *KubeconfigPods) Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	cs, err := k.clientset()
	if err != nil {
		return nil, err
	}
	return cs.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
}

// specPod fetches the pod of a RunPodSandbox request. It fails closed: a
// pod that cannot be read (and was never read before the apiserver became
// unreachable: lastknown.go), or that is not the one the sandbox is for
// (same name, another UID), is not run. The kubelet retries with back-off.
func specPod(ctx context.Context, src PodSource, sb *runtimeapi.PodSandboxConfig) (*corev1.Pod, error) {
	md := sb.GetMetadata()
	ctx, cancel := context.WithTimeout(ctx, podLookupTimeout)
	defer cancel()
	pod, err := src.Pod(ctx, md.GetNamespace(), md.GetName())
	what := fmt.Sprintf("evelet guardrails: cannot check pod %s/%s (uid %s) against the device's spec-level rules", md.GetNamespace(), md.GetName(), md.GetUid())
	switch {
	case apierrors.IsNotFound(err):
		return nil, status.Errorf(codes.FailedPrecondition, "%s: the apiserver has no such pod", what)
	case err != nil:
		return nil, status.Errorf(codes.Unavailable, "%s: reading it from the apiserver: %v", what, err)
	case string(pod.UID) != md.GetUid():
		return nil, status.Errorf(codes.FailedPrecondition, "%s: the apiserver's pod of that name has uid %s", what, pod.UID)
	}
	return pod, nil
}
