package policy

import (
	"fmt"
	"slices"
	"strings"
)

// Volume plugins. The kubelet sets a pod's volumes up itself, as root and
// before any CRI call; evelet's kubelet judges every plugin there
// (kubelet-shim VolumeGuard), by what the plugin does on the host.
const (
	// RuleVolumePlugins refuses volumes of plugins that make the kubelet
	// mount, log in or run programs on the host (nfs, iscsi, fc, ...),
	// unless the owner allows the plugin by name, and of plugins evelet
	// does not know (fail closed).
	RuleVolumePlugins = "no-host-volume-plugins"
	// RuleImageVolumes refuses image volumes: the runtime evelet drives
	// (containerd 1.6's CRI) cannot mount them; it fails with `failed to
	// mkdir ""` after the pod was admitted.
	RuleImageVolumes = "no-image-volumes"

	KeyAllowedVolumePlugins = KeyPrefix + "allowed-volume-plugins"
)

// VolumePluginClass says how a volume plugin is judged.
type VolumePluginClass int

const (
	// PluginUnknown: not a plugin of the kubelet evelet vendors: refused.
	PluginUnknown VolumePluginClass = iota
	// PluginHostless: files the kubelet writes itself into the pod's own
	// directory (configMap, secret, downwardAPI, projected), an emptyDir,
	// or CSI (whose node driver would have to run on the device, as a
	// privileged pod the policy refuses). Admitted; emptyDir in memory is
	// bounded (RuleUnboundedMemoryVolume).
	PluginHostless
	// PluginHostPath: a host path (hostPath, local PersistentVolume),
	// judged by JudgeHostPath.
	PluginHostPath
	// PluginHostMounting: the kubelet mounts a remote or block filesystem
	// on the host, or runs a program for it (git): refused unless the
	// owner allows it by name (AllowedVolumePlugins).
	PluginHostMounting
	// PluginImage: an OCI image as a volume: refused (RuleImageVolumes).
	PluginImage
)

type volumePlugin struct {
	short string
	class VolumePluginClass
}

// inTreeVolumePlugins are the plugins of k8s.io/kubernetes v1.35
// cmd/kubelet/app ProbeVolumePlugins (plugins.go, plugins_providers.go),
// by their GetPluginName. FlexVolume drivers are never loaded (the
// kubelet's dynamic prober is replaced).
var inTreeVolumePlugins = map[string]volumePlugin{
	"kubernetes.io/empty-dir":       {"empty-dir", PluginHostless},
	"kubernetes.io/configmap":       {"configmap", PluginHostless},
	"kubernetes.io/secret":          {"secret", PluginHostless},
	"kubernetes.io/downward-api":    {"downward-api", PluginHostless},
	"kubernetes.io/projected":       {"projected", PluginHostless},
	"kubernetes.io/csi":             {"csi", PluginHostless},
	"kubernetes.io/host-path":       {"host-path", PluginHostPath},
	"kubernetes.io/local-volume":    {"local-volume", PluginHostPath},
	"kubernetes.io/nfs":             {"nfs", PluginHostMounting},
	"kubernetes.io/iscsi":           {"iscsi", PluginHostMounting},
	"kubernetes.io/fc":              {"fc", PluginHostMounting},
	"kubernetes.io/git-repo":        {"git-repo", PluginHostMounting},
	"kubernetes.io/portworx-volume": {"portworx-volume", PluginHostMounting},
	"kubernetes.io/image":           {"image", PluginImage},
}

// ClassifyVolumePlugin returns how the plugin named name (its
// GetPluginName) is judged.
func ClassifyVolumePlugin(name string) VolumePluginClass {
	return inTreeVolumePlugins[name].class
}

// HostMountingVolumePlugins lists the short names the owner may allow.
func HostMountingVolumePlugins() []string {
	var out []string
	for _, p := range inTreeVolumePlugins {
		if p.class == PluginHostMounting {
			out = append(out, p.short)
		}
	}
	slices.Sort(out)
	return out
}

// CheckVolumePlugin judges a volume by its plugin alone: nil for hostless
// and host-path plugins (the latter are judged by their path), a host
// mounting plugin the owner allowed; else a *Violation.
func (p Policy) CheckVolumePlugin(subject, volume, plugin string) error {
	vp, known := inTreeVolumePlugins[plugin]
	what := fmt.Sprintf("has volume %q of plugin %s", volume, plugin)
	switch {
	case !known:
		return &Violation{RuleVolumePlugins, subject, what + ", which evelet does not know and so cannot judge", "", ""}
	case vp.class == PluginImage:
		return &Violation{RuleImageVolumes, subject, what + " (an image volume), which the device's runtime cannot mount; ship the files in the container image or an init container", "", ""}
	case vp.class == PluginHostMounting && !slices.Contains(p.AllowedVolumePlugins, vp.short):
		return &Violation{RuleVolumePlugins, subject, what + ", which makes the kubelet mount or run programs on the device itself", KeyAllowedVolumePlugins, vp.short}
	}
	return nil
}

func parseVolumePlugin(e string) (string, error) {
	n := strings.ToLower(e)
	if !strings.Contains(n, "/") {
		n = "kubernetes.io/" + n
	}
	vp, ok := inTreeVolumePlugins[n]
	if !ok || vp.class != PluginHostMounting {
		return "", fmt.Errorf("not a volume plugin that can be allowed (%s)", strings.Join(HostMountingVolumePlugins(), ", "))
	}
	return vp.short, nil
}
