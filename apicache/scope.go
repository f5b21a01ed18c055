package apicache

import (
	"sort"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Scope is what one list or watch asked for: a resource in a namespace
// ("" for all), narrowed by field and label selectors, the way the kubelet
// asks (pods with spec.nodeName=<node>, one ConfigMap by metadata.name).
type Scope struct {
	GVR       schema.GroupVersionResource
	Namespace string
	Fields    string
	Labels    string
}

// Key identifies the scope in scopes.json.
func (sc Scope) Key() string {
	return gvrDir(sc.GVR) + "|" + sc.Namespace + "|" + sc.Fields + "|" + sc.Labels
}

// Matches applies the scope to a cached object. A selector that does not
// parse matches nothing: the cache never answers more than was asked.
func (sc Scope) Matches(obj runtime.Object) bool {
	m, err := meta.Accessor(obj)
	if err != nil {
		return false
	}
	if sc.Namespace != "" && m.GetNamespace() != sc.Namespace {
		return false
	}
	if sc.Labels != "" {
		sel, err := labels.Parse(sc.Labels)
		if err != nil || !sel.Matches(labels.Set(m.GetLabels())) {
			return false
		}
	}
	if sc.Fields != "" {
		sel, err := fields.ParseSelector(sc.Fields)
		if err != nil || !sel.Matches(objectFields(obj)) {
			return false
		}
	}
	return true
}

// objectFields are the field-selector fields the cache can evaluate: the
// ones every resource has, and a pod's node name, which is how a node's
// clients select their pods.
func objectFields(obj runtime.Object) fields.Set {
	m, _ := meta.Accessor(obj)
	f := fields.Set{"metadata.name": m.GetName(), "metadata.namespace": m.GetNamespace()}
	if p, ok := obj.(*corev1.Pod); ok {
		f["spec.nodeName"] = p.Spec.NodeName
		f["status.phase"] = string(p.Status.Phase)
	}
	return f
}

func sortByName(objs []runtime.Object) {
	sort.Slice(objs, func(i, j int) bool { return objKey(objs[i]) < objKey(objs[j]) })
}
