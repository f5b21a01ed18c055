// Package nad resolves NetworkAttachmentDefinitions (k8s.cni.cncf.io/v1)
// into CNI network configuration lists, with the namespace and plugin rules
// that keep a tenant's NAD inside what the device owner allows.
package nad

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"

	"github.com/lf-edge/evelet/cni/annotation"
	"github.com/lf-edge/evelet/cni/tenantjson"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// GVR is the NetworkAttachmentDefinition resource.
var GVR = schema.GroupVersionResource{Group: "k8s.cni.cncf.io", Version: "v1", Resource: "network-attachment-definitions"}

// Rules is what the device owner (through the agent) lets a NAD use.
type Rules struct {
	// SharedNamespaces are namespaces whose NADs any pod may use, besides
	// its own namespace. Empty: a pod uses only NADs of its own namespace.
	SharedNamespaces []string `json:"sharedNamespaces,omitempty"`
	// PluginTypes are the CNI plugin types a NAD's config may name. Every
	// plugin in a conflist must be listed. A plugin like host-device or
	// macvlan on a host interface hands a host network to the pod, so the
	// agent's default is only eve-ni (which applies the owner's NI policy).
	PluginTypes []string `json:"pluginTypes"`
	// IPAMTypes are the IPAM plugin types a NAD may name ("ipam":{"type"}).
	IPAMTypes []string `json:"ipamTypes,omitempty"`
}

// Network is one resolved attachment definition.
type Network struct {
	Namespace, Name string
	List            *libcni.NetworkConfigList
}

// Ref is "namespace/name".
func (n *Network) Ref() string { return n.Namespace + "/" + n.Name }

// Resolver reads NADs from the apiserver.
type Resolver struct {
	Client dynamic.Interface
	// ConfDir is where a NAD with an empty spec.config finds its
	// configuration: the file whose network "name" is the NAD's name.
	ConfDir string
	Rules   Rules
	// Self is the meta plugin's own type, never allowed as a delegate.
	Self string
}

// Resolve returns the network podNamespace's pod asked for as ns/name.
func (r *Resolver) Resolve(ctx context.Context, podNamespace, ns, name string) (*Network, error) {
	ref := ns + "/" + name
	if ns != podNamespace && !contains(r.Rules.SharedNamespaces, ns) {
		return nil, fmt.Errorf("NetworkAttachmentDefinition %s: a pod in namespace %q may use only NADs of its own namespace%s", ref, podNamespace, sharedHint(r.Rules.SharedNamespaces))
	}
	obj, err := r.Client.Resource(GVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("NetworkAttachmentDefinition %s not found", ref)
	}
	if err != nil {
		return nil, fmt.Errorf("NetworkAttachmentDefinition %s: %w", ref, err)
	}
	config, _, err := unstructured.NestedString(obj.Object, "spec", "config")
	if err != nil {
		return nil, fmt.Errorf("NetworkAttachmentDefinition %s: spec.config is not a string: %w", ref, err)
	}
	var raw []byte
	if strings.TrimSpace(config) == "" {
		if raw, err = FromConfDir(r.ConfDir, name); err != nil {
			return nil, fmt.Errorf("NetworkAttachmentDefinition %s has no spec.config: %w", ref, err)
		}
	} else {
		raw = []byte(config)
	}
	if raw, err = withName(raw, name); err != nil {
		return nil, fmt.Errorf("NetworkAttachmentDefinition %s: %w", ref, err)
	}
	list, err := Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("NetworkAttachmentDefinition %s: %w", ref, err)
	}
	if err := r.check(list); err != nil {
		return nil, fmt.Errorf("NetworkAttachmentDefinition %s: %w", ref, err)
	}
	return &Network{Namespace: ns, Name: name, List: list}, nil
}

// Allows checks a network a pod in podNamespace attached before (its
// Ref's namespace ns, its config list as run) against the rules in force
// now: the namespace, the plugin types and the IPAM types. A pod re-attached
// during an apiserver outage gets only what the owner allows today.
func (r Rules) Allows(podNamespace, ns string, list *libcni.NetworkConfigList) error {
	if ns != podNamespace && !contains(r.SharedNamespaces, ns) {
		return fmt.Errorf("a pod in namespace %q may use only NADs of its own namespace%s", podNamespace, sharedHint(r.SharedNamespaces))
	}
	for _, p := range list.Plugins {
		if !contains(r.PluginTypes, p.Network.Type) {
			return fmt.Errorf("plugin type %q is not allowed on this node (allowed: %s)", p.Network.Type, list2str(r.PluginTypes))
		}
		var pm map[string]any
		if err := json.Unmarshal(p.Bytes, &pm); err != nil {
			return fmt.Errorf("plugin %q: %v", p.Network.Type, err)
		}
		im, _ := getMap(pm, "ipam")
		if it, _ := getString(im, "type"); it != "" && !contains(r.IPAMTypes, it) {
			return fmt.Errorf("IPAM type %q is not allowed on this node (allowed: %s)", it, list2str(r.IPAMTypes))
		}
	}
	return nil
}

// withName gives a config without a network "name" the NAD's name (spec
// 3.4.2: the NAD's name is the network's when its config names none).
func withName(raw []byte, name string) ([]byte, error) {
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("CNI config is not valid JSON: %v", err)
	}
	if n, ok := tenantjson.Get(m, "name"); ok && n != "" {
		return raw, nil
	}
	if err := tenantjson.CheckKeys(raw); err != nil {
		return nil, fmt.Errorf("CNI config: %w", err)
	}
	tenantjson.Set(m, "name", name)
	return json.Marshal(m)
}

// Parse reads a CNI config or conflist. The JSON check comes first so a
// tenant sees "not valid JSON" rather than a library message.
func Parse(raw []byte) (*libcni.NetworkConfigList, error) {
	var probe map[string]any
	if err := json.Unmarshal(raw, &probe); err != nil {
		return nil, fmt.Errorf("CNI config is not valid JSON: %v", err)
	}
	if err := tenantjson.CheckKeys(raw); err != nil {
		return nil, fmt.Errorf("CNI config: %w", err)
	}
	if _, isList := tenantjson.Get(probe, "plugins"); isList {
		list, err := libcni.ConfListFromBytes(raw)
		if err != nil {
			return nil, fmt.Errorf("CNI conflist: %w", err)
		}
		return list, nil
	}
	conf, err := libcni.ConfFromBytes(raw)
	if err != nil {
		return nil, fmt.Errorf("CNI config: %w", err)
	}
	list, err := libcni.ConfListFromConf(conf)
	if err != nil {
		return nil, fmt.Errorf("CNI config: %w", err)
	}
	return list, nil
}

// networkName is libcni's rule for network names; the name becomes part of
// cache and IPAM paths, so nothing else may pass.
var networkName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`)

func (r *Resolver) check(list *libcni.NetworkConfigList) error {
	if !networkName.MatchString(list.Name) {
		return fmt.Errorf("CNI network name %q: use letters, digits, '-', '_' and '.'", list.Name)
	}
	if len(list.Plugins) == 0 {
		return errors.New("CNI conflist has no plugins")
	}
	// Keys are compared as Go decodes them (any letter case), so two
	// keys that a plugin reads as one are refused before any check below
	// could look at the wrong one.
	if err := tenantjson.CheckKeys(list.Bytes); err != nil {
		return fmt.Errorf("CNI config: %w", err)
	}
	// A tenant's config must not point a delegate (running as root) at a
	// host file or socket: host-local's dataDir, dhcp's daemonSocketPath,
	// eve-ni's eveniConfig (a settings file the tenant could have written
	// into an emptyDir, with its own allow-list), or whatever a plugin adds,
	// neither absolute nor relative (relative resolves on the host).
	for _, p := range list.Plugins {
		t := p.Network.Type
		if t == r.Self {
			return fmt.Errorf("plugin type %q: evelet-cni cannot delegate to itself", t)
		}
		if !contains(r.Rules.PluginTypes, t) {
			return fmt.Errorf("plugin type %q is not allowed on this node (allowed: %s)", t, list2str(r.Rules.PluginTypes))
		}
		var pm map[string]any
		if err := json.Unmarshal(p.Bytes, &pm); err != nil {
			return fmt.Errorf("plugin %q: %v", t, err)
		}
		if err := nodeKeys(t, pm); err != nil {
			return err
		}
		im, _ := getMap(pm, "ipam")
		if it, _ := getString(im, "type"); it != "" {
			if !contains(r.Rules.IPAMTypes, it) {
				return fmt.Errorf("IPAM type %q is not allowed on this node (allowed: %s)", it, list2str(r.Rules.IPAMTypes))
			}
			// host-local writes its leases under dataDir as root: a tenant
			// must not choose where on the host that is.
			if _, set := tenantjson.Get(im, "dataDir"); set {
				return fmt.Errorf("IPAM %q: \"dataDir\" may not be set in a NetworkAttachmentDefinition", it)
			}
		}
	}
	var doc any
	if err := json.Unmarshal(list.Bytes, &doc); err != nil {
		return fmt.Errorf("CNI config is not valid JSON: %v", err)
	}
	if key, problem := tenantjson.FindPath(doc); key != "" {
		return fmt.Errorf("%q names a host path (its value %s); a NetworkAttachmentDefinition may not (the node's settings give plugins their paths)", key, problem)
	}
	return nil
}

// runtimeKeys are what the runtime and evelet-cni give a delegate; a NAD
// setting one (in any letter case) would choose what the pod's annotation
// is checked for (runtimeConfig: mac, ips) or the node's settings.
var runtimeKeys = []string{"runtimeConfig", "prevResult", "cniVersions"}

func nodeKeys(t string, pm map[string]any) error {
	for _, k := range runtimeKeys {
		if _, set := tenantjson.Get(pm, k); set {
			return fmt.Errorf("plugin %q: %q is the runtime's to set, not a NetworkAttachmentDefinition's", t, k)
		}
	}
	if t == "eve-ni" {
		if _, set := tenantjson.Get(pm, "eveniConfig"); set {
			return fmt.Errorf("plugin %q: \"eveniConfig\" is the node's to set, not a NetworkAttachmentDefinition's", t)
		}
	}
	if a, ok := tenantjson.Get(pm, "args"); ok {
		am, _ := a.(map[string]any)
		if cn, ok := tenantjson.Get(am, "cni"); ok {
			cm, _ := cn.(map[string]any)
			if k := annotation.DeniedArg(cm); k != "" {
				return fmt.Errorf("plugin %q: \"args\": {\"cni\": {%q}} sets the interface's identity or kernel settings, which a NetworkAttachmentDefinition may not (use the pod's \"mac\"/\"ips\" with the capability)", t, k)
			}
		}
	}
	return nil
}

// FromConfDir returns the config file in dir whose network name is name.
func FromConfDir(dir, name string) ([]byte, error) {
	if dir == "" {
		return nil, errors.New("no CNI conf dir is configured to look it up in")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range entries {
		switch filepath.Ext(e.Name()) {
		case ".conf", ".conflist", ".json":
			if e.Type().IsRegular() {
				files = append(files, e.Name())
			}
		}
	}
	sort.Strings(files)
	for _, f := range files {
		raw, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			continue
		}
		var n struct {
			Name string `json:"name"`
		}
		if json.Unmarshal(raw, &n) == nil && n.Name == name {
			return raw, nil
		}
	}
	return nil, &noConfigError{name: name, dir: dir}
}

// noConfigError: no file in the conf dir has the network name. It is an
// fs.ErrNotExist, as a missing conf dir is.
type noConfigError struct{ name, dir string }

func (e *noConfigError) Error() string {
	return fmt.Sprintf("no CNI config named %q in %s", e.name, e.dir)
}

func (e *noConfigError) Is(target error) bool { return target == fs.ErrNotExist }

func getMap(m map[string]any, key string) (map[string]any, bool) {
	v, ok := tenantjson.Get(m, key)
	mv, _ := v.(map[string]any)
	return mv, ok && mv != nil
}

func getString(m map[string]any, key string) (string, bool) {
	v, ok := tenantjson.Get(m, key)
	sv, _ := v.(string)
	return sv, ok
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func list2str(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}

func sharedHint(l []string) string {
	if len(l) == 0 {
		return ""
	}
	return " or of " + strings.Join(l, ", ")
}
