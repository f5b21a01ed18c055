package meta

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	ktypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/lf-edge/evelet/cni/nad"
)

var (
	podsGVR   = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	eventsGVR = schema.GroupVersionResource{Version: "v1", Resource: "events"}
)

// KubeClients builds the clients from the kubeconfigs the configuration
// names. The dynamic client keeps the binary free of the typed API.
func KubeClients(c *Conf) (*Clients, error) {
	if c.Kubeconfig != "" {
		if _, err := os.Stat(c.Kubeconfig); err == nil {
			dc, err := dynamicClient(c.Kubeconfig)
			if err != nil {
				return nil, fmt.Errorf("evelet-network credential %s: %w", c.Kubeconfig, err)
			}
			return &Clients{
				Pods:        &kubePods{dc},
				NADs:        &nad.Resolver{Client: dc, ConfDir: c.ConfDir, Rules: c.Rules, Self: PluginType},
				CanAnnotate: true,
				Events:      &kubeEvents{dc, c.NodeName},
			}, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("evelet-network credential: %w", err)
		}
	}
	if c.NodeKubeconfig != "" {
		if _, err := os.Stat(c.NodeKubeconfig); err == nil {
			dc, err := dynamicClient(c.NodeKubeconfig)
			if err != nil {
				return nil, fmt.Errorf("node credential %s: %w", c.NodeKubeconfig, err)
			}
			return &Clients{Pods: &kubePods{dc}}, nil
		}
	}
	return &Clients{}, nil
}

func dynamicClient(path string) (dynamic.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "evelet-cni"
	return dynamic.NewForConfig(cfg)
}

type kubePods struct{ c dynamic.Interface }

func (k *kubePods) Get(ctx context.Context, ns, name string) (*Pod, error) {
	u, err := k.c.Resource(podsGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	nodeName, _, _ := unstructured.NestedString(u.Object, "spec", "nodeName")
	return &Pod{UID: string(u.GetUID()), NodeName: nodeName, Annotations: u.GetAnnotations()}, nil
}

func (k *kubePods) Annotate(ctx context.Context, ns, name, key, value string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{key: value}}})
	if err != nil {
		return err
	}
	// Through pods/status, as multus does: the credential then needs no
	// "patch pods", which could change a pod's image (run code). The
	// status subresource keeps the spec as it is and takes annotations.
	_, err = k.c.Resource(podsGVR).Namespace(ns).Patch(ctx, name, ktypes.MergePatchType, patch, metav1.PatchOptions{}, "status")
	return err
}

// kubeEvents writes core/v1 Events about pods, as the kubelet's recorder
// does (a generated name in the pod's namespace, the pod as involved
// object), so `kubectl describe pod` lists them.
type kubeEvents struct {
	c    dynamic.Interface
	node string
}

func (k *kubeEvents) PodEvent(ctx context.Context, ns, name, uid, reason, message string) error {
	now := metav1.Now().UTC().Format(time.RFC3339)
	ev := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Event",
		"metadata":       map[string]any{"generateName": name + ".", "namespace": ns},
		"involvedObject": map[string]any{"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name, "uid": uid},
		"reason":         reason, "message": message, "type": "Normal",
		"source":         map[string]any{"component": "evelet-cni", "host": k.node},
		"firstTimestamp": now, "lastTimestamp": now, "count": int64(1),
		"reportingComponent": "evelet-cni", "reportingInstance": k.node,
	}}
	_, err := k.c.Resource(eventsGVR).Namespace(ns).Create(ctx, ev, metav1.CreateOptions{})
	return err
}
