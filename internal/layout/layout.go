// Package layout is the one place that names evelet's files under its state
// root (/persist/evelet on a device: credentials, the kubelet's directories,
// pod networking, VM and upgrade state) and its run root (/run/evelet: the
// CRI socket, status, the kubelet's policy file, sockets and markers).
// Everything that needs a path asks here instead of joining names itself;
// docs/architecture.md lists them.
package layout

import "path/filepath"

// DefaultStateDir is the persistent state root on an EVE device.
const DefaultStateDir = "/persist/evelet"

// State is the persistent state root.
type State struct{ Dir string }

// Credentials is the credential directory (0700).
func (s State) Credentials() Credentials {
	return Credentials{Dir: filepath.Join(s.Dir, "credentials")}
}

// KubeletConfig is the generated KubeletConfiguration file.
func (s State) KubeletConfig() string { return filepath.Join(s.Dir, "kubelet", "config.yaml") }

// KubeletRoot is the kubelet's --root-dir (pods, volumes, plugins).
func (s State) KubeletRoot() string { return filepath.Join(s.Dir, "kubelet", "root") }

// PodLogs is the kubelet's podLogsDir.
func (s State) PodLogs() string { return filepath.Join(s.Dir, "logs", "pods") }

// UpgradeState is the upgrade coordinator's record of an OS update or
// reboot in progress (agent/upgrade): it must survive the reboot it spans.
func (s State) UpgradeState() string { return filepath.Join(s.Dir, "upgrade", "state.json") }

// Credentials names the files in the credential directory.
type Credentials struct{ Dir string }

// BootstrapKubeconfig is what the kubelet uses for TLS bootstrapping.
func (c Credentials) BootstrapKubeconfig() string {
	return filepath.Join(c.Dir, "bootstrap-kubeconfig")
}

// Kubeconfig is the kubelet's own kubeconfig, written by the kubelet after
// its CSR is approved.
func (c Credentials) Kubeconfig() string { return filepath.Join(c.Dir, "kubeconfig") }

// CertDir is the kubelet's --cert-dir (rotated client and serving certs).
func (c Credentials) CertDir() string { return filepath.Join(c.Dir, "pki") }

// ClusterCA is the cluster CA bundle exactly as discovery found it; also the
// kubelet's client CA for its own API.
func (c Credentials) ClusterCA() string { return filepath.Join(c.Dir, "ca.crt") }

// APICache is the local API cache (apicache): one directory per client,
// Secrets and tokens among its files, so it lives with the credentials and
// goes when they are wiped.
func (c Credentials) APICache() string { return filepath.Join(c.Dir, "apicache") }

// KubeletAPICacheKubeconfig is the kubelet's kubeconfig to the local API
// cache, rewritten before every kubelet start (the cache's port and
// serving certificate are new at every agent start).
func (c Credentials) KubeletAPICacheKubeconfig() string {
	return filepath.Join(c.Dir, "kubelet-apicache.kubeconfig")
}

// JoinRecord says which cluster the credentials belong to.
func (c Credentials) JoinRecord() string { return filepath.Join(c.Dir, "join.json") }

// EveNI is the eve-ni CNI plugin's state (address allocations per EVE
// network instance): persistent, so no address is given twice across a
// reboot.
func (s State) EveNI() string { return filepath.Join(s.Dir, "cni", "eve-ni") }
