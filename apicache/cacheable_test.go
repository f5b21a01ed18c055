package apicache

import (
	"testing"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/scheme"
)

// TestCacheableKinds: every cached resource can be answered offline: its
// kind and list kind exist in the scheme at a served version (an empty
// cache answers lists and watch-list bookmarks from these types), including
// what kube-proxy (ServiceCIDRs) and the node DNS (Namespaces) read.
func TestCacheableKinds(t *testing.T) {
	for gr, kind := range cacheable {
		found := false
		for _, gv := range scheme.Scheme.VersionsForGroupKind(schema.GroupKind{Group: gr.Group, Kind: kind}) {
			if scheme.Scheme.Recognizes(gv.WithKind(kind)) && scheme.Scheme.Recognizes(gv.WithKind(kind+"List")) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: kind %s or %sList unknown to the scheme", gr, kind, kind)
		}
	}
	for _, r := range []string{"namespaces", "servicecidrs", "services", "endpointslices"} {
		ok := false
		for gr := range cacheable {
			ok = ok || gr.Resource == r
		}
		if !ok {
			t.Errorf("%s not cached: kube-proxy or the node DNS could not start offline", r)
		}
	}
}
