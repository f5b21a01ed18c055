package nad

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
)

func nadObj(ns, name, config string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "k8s.cni.cncf.io/v1",
		"kind":       "NetworkAttachmentDefinition",
		"metadata":   map[string]any{"namespace": ns, "name": name},
		"spec":       map[string]any{},
	}}
	if config != "" {
		u.Object["spec"] = map[string]any{"config": config}
	}
	return u
}

func newResolver(t *testing.T, objs ...runtime.Object) *Resolver {
	t.Helper()
	s := runtime.NewScheme()
	c := dynfake.NewSimpleDynamicClientWithCustomListKinds(s, map[schema.GroupVersionResource]string{GVR: "NetworkAttachmentDefinitionList"})
	for _, o := range objs {
		u := o.(*unstructured.Unstructured)
		if err := c.Tracker().Create(GVR, u, u.GetNamespace()); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	return &Resolver{Client: c, ConfDir: dir, Self: "evelet-cni", Rules: Rules{
		SharedNamespaces: []string{"shared"},
		PluginTypes:      []string{"bridge", "macvlan", "eve-ni"},
		IPAMTypes:        []string{"host-local", "static"},
	}}
}

const bridgeConf = `{"cniVersion":"1.0.0","name":"br","type":"bridge","bridge":"h6x","ipam":{"type":"host-local","subnet":"10.9.0.0/24"}}`

func TestResolve(t *testing.T) {
	r := newResolver(t,
		nadObj("pods", "conf", bridgeConf),
		nadObj("pods", "list", `{"cniVersion":"1.0.0","name":"l","plugins":[{"type":"macvlan","master":"x"},{"type":"eve-ni"}]}`),
		nadObj("shared", "conf", bridgeConf),
		nadObj("pods", "fromfile", ""),
	)
	if err := os.WriteFile(filepath.Join(r.ConfDir, "50-x.conf"), []byte(`{"cniVersion":"1.0.0","name":"fromfile","type":"bridge"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ns, name, wantNet string
		plugins           int
	}{
		{"pods", "conf", "br", 1},
		{"pods", "list", "l", 2},
		{"shared", "conf", "br", 1},
		{"pods", "fromfile", "fromfile", 1},
	} {
		n, err := r.Resolve(context.Background(), "pods", c.ns, c.name)
		if err != nil {
			t.Fatalf("%s/%s: %v", c.ns, c.name, err)
		}
		if n.List.Name != c.wantNet || len(n.List.Plugins) != c.plugins || n.Ref() != c.ns+"/"+c.name {
			t.Fatalf("%s/%s: got %s with %d plugins", c.ns, c.name, n.List.Name, len(n.List.Plugins))
		}
	}
}

func TestResolveRefusals(t *testing.T) {
	r := newResolver(t,
		nadObj("other", "x", bridgeConf),
		nadObj("pods", "notjson", `{"cniVersion":`),
		nadObj("pods", "hostdev", `{"cniVersion":"1.0.0","name":"h","type":"host-device","device":"eth0"}`),
		nadObj("pods", "self", `{"cniVersion":"1.0.0","name":"s","type":"evelet-cni"}`),
		nadObj("pods", "ipam", `{"cniVersion":"1.0.0","name":"d","type":"bridge","ipam":{"type":"dhcp"}}`),
		nadObj("pods", "datadir", `{"cniVersion":"1.0.0","name":"d","type":"bridge","ipam":{"type":"host-local","dataDir":"/persist"}}`),
		nadObj("pods", "badname", `{"cniVersion":"1.0.0","name":"../../x","type":"bridge"}`),
		nadObj("pods", "nofile", ""),
		nadObj("pods", "noplugins", `{"cniVersion":"1.0.0","name":"n","plugins":[]}`),
		nadObj("pods", "eveniconfig", `{"cniVersion":"1.1.0","name":"e","type":"eve-ni","networkInstance":"ni1","eveniConfig":"/persist/evelet/kubelet/root/pods/x/volumes/kubernetes.io~empty-dir/v/eve-ni.json"}`),
		nadObj("pods", "dhcpsock", `{"cniVersion":"1.0.0","name":"d","type":"bridge","ipam":{"type":"static","daemonSocketPath":"/run/containerd/containerd.sock"}}`),
		nadObj("pods", "nestedpath", `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"macvlan","x":[{"y":"/etc/shadow"}]}]}`),
		nadObj("pods", "reldatadir", `{"cniVersion":"1.0.0","name":"d","type":"bridge","ipam":{"type":"host-local","dataDir":"../../x"}}`),
		nadObj("pods", "relevenicfg", `{"cniVersion":"1.1.0","name":"e","type":"eve-ni","networkInstance":"ni1","eveniConfig":"eve-ni.json"}`),
		// Go decodes keys in any letter case: these reached eve-ni and dhcp.
		nadObj("pods", "foldevenicfg", `{"cniVersion":"1.1.0","name":"e","type":"eve-ni","networkInstance":"ni1","eveniconfig":"../../../persist/x/eve-ni.json"}`),
		nadObj("pods", "foldsock", `{"cniVersion":"1.0.0","name":"d","type":"bridge","ipam":{"type":"static","daemonsocketpath":"../../run/containerd/containerd.sock"}}`),
		nadObj("pods", "dupkeys", `{"cniVersion":"1.1.0","name":"e","type":"eve-ni","networkInstance":"ni1","NetworkInstance":"ni2"}`),
		nadObj("pods", "foldtype", `{"cniVersion":"1.0.0","name":"n","plugins":[{"Type":"eve-ni","networkInstance":"ni1","EveniConfig":"x"}]}`),
		nadObj("pods", "foldplugins", `{"cniVersion":"1.0.0","name":"n","Plugins":[{"type":"host-device"}]}`),
		nadObj("pods", "reldir", `{"cniVersion":"1.0.0","name":"d","type":"bridge","ipam":{"type":"static","anyDir":"leases"}}`),
		nadObj("pods", "climb", `{"cniVersion":"1.0.0","name":"d","type":"bridge","x":"a/../../../etc"}`),
		nadObj("pods", "rtconf", `{"cniVersion":"1.1.0","name":"e","type":"eve-ni","networkInstance":"ni1","runtimeConfig":{"mac":"02:00:00:00:00:01"}}`),
		nadObj("pods", "rtconffold", `{"cniVersion":"1.1.0","name":"e","type":"eve-ni","networkInstance":"ni1","RuntimeConfig":{"ips":["10.0.0.1/24"]}}`),
		nadObj("pods", "argsmac", `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"macvlan","args":{"cni":{"MAC":"02:00:00:00:00:01"}}}]}`),
		nadObj("pods", "argsips", `{"cniVersion":"1.0.0","name":"d","type":"bridge","ipam":{"type":"static"},"args":{"cni":{"ips":["10.0.0.9/24"]}}}`),
		nadObj("pods", "laterplugin", `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"host-device"}]}`),
	)
	for _, c := range []struct{ ns, name, want string }{
		{"pods", "missing", "NetworkAttachmentDefinition pods/missing not found"},
		{"other", "x", `a pod in namespace "pods" may use only NADs of its own namespace or of shared`},
		{"pods", "notjson", "pods/notjson: CNI config is not valid JSON"},
		{"pods", "hostdev", `plugin type "host-device" is not allowed on this node`},
		{"pods", "self", "cannot delegate to itself"},
		{"pods", "ipam", `IPAM type "dhcp" is not allowed`},
		{"pods", "badname", "CNI network name"},
		{"pods", "nofile", `has no spec.config: no CNI config named "nofile"`},
		{"pods", "noplugins", "no plugins"},
		{"pods", "laterplugin", `"host-device" is not allowed`},
		{"pods", "relevenicfg", `"eveniConfig" is the node's to set`},
		{"pods", "reldatadir", `"dataDir" may not be set`},
		{"pods", "eveniconfig", `"eveniConfig" is the node's to set`},
		{"pods", "foldevenicfg", `"eveniConfig" is the node's to set`},
		{"pods", "foldsock", `"plugins[0].ipam.daemonsocketpath" names a host path`},
		{"pods", "dupkeys", `keys "networkInstance" and "NetworkInstance" are the same key`},
		{"pods", "foldtype", `"eveniConfig" is the node's to set`},
		{"pods", "foldplugins", "no plugins"},
		{"pods", "reldir", `"plugins[0].ipam.anyDir" names a host path`},
		{"pods", "climb", `"plugins[0].x" names a host path (its value is a relative path that climbs`},
		{"pods", "rtconf", `"runtimeConfig" is the runtime's to set`},
		{"pods", "rtconffold", `"runtimeConfig" is the runtime's to set`},
		{"pods", "argsmac", `{"cni": {"MAC"}} sets the interface's identity`},
		{"pods", "argsips", `{"cni": {"ips"}} sets the interface's identity`},
		{"pods", "dhcpsock", `ipam.daemonSocketPath" names a host path`},
		{"pods", "nestedpath", `"plugins[1].x[0].y" names a host path`},
		{"pods", "datadir", `"dataDir" may not be set`},
	} {
		_, err := r.Resolve(context.Background(), "pods", c.ns, c.name)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s/%s: error %v, want %q", c.ns, c.name, err, c.want)
		}
	}
}

// Spec 3.4.2: a config without "name" takes the NAD's name.
func TestResolveNamesANamelessConfig(t *testing.T) {
	r := newResolver(t,
		nadObj("pods", "anon", `{"cniVersion":"1.0.0","type":"bridge","bridge":"h6x"}`),
		nadObj("pods", "anonlist", `{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}`),
	)
	for _, name := range []string{"anon", "anonlist"} {
		n, err := r.Resolve(context.Background(), "pods", "pods", name)
		if err != nil || n.List.Name != name {
			t.Fatalf("%s: %+v %v, want the network named after the NAD", name, n, err)
		}
	}
}
