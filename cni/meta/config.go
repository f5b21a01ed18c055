// Package meta is evelet-cni, the meta plugin that makes a pod
// multi-network: it runs the node's default pod network, then one delegate
// per network the pod's k8s.v1.cni.cncf.io/networks annotation names,
// records what it did so DEL works without the apiserver, and reports the
// result in k8s.v1.cni.cncf.io/network-status.
package meta

import (
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/lf-edge/evelet/cni/nad"
)

// PluginType is the plugin's CNI type (its binary name).
const PluginType = "evelet-cni"

// Conf is evelet-cni's own network configuration, written by the agent.
type Conf struct {
	types.PluginConf
	// Delegate is the network name of the default pod network's config
	// in ConfDir (today the bridge/host-local network).
	Delegate string `json:"delegate"`
	// ConfDir holds the default network and configs of NADs whose
	// spec.config is empty.
	ConfDir string `json:"confDir"`
	// StateDir holds the attachment cache and libcni's result cache; it
	// must survive what DEL must survive (a reboot: under the state root).
	StateDir string `json:"stateDir"`
	// Kubeconfig is the evelet-network service account's credential (read
	// NADs, read and annotate pods). Optional: without it only pods
	// without extra networks can run.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// NodeKubeconfig is the node's own credential, used to read the pod
	// when Kubeconfig is absent (to tell whether it asks for networks).
	NodeKubeconfig string `json:"nodeKubeconfig,omitempty"`
	// NodeName is this node: the plugin annotates only pods bound to it.
	NodeName string `json:"nodeName"`
	// EveNIConfig is the eve-ni plugin's settings file; evelet-cni sets it
	// as "eveniConfig" in every eve-ni delegate (a NAD may not).
	EveNIConfig string `json:"eveniConfig,omitempty"`
	// Rules limit what a NAD may use.
	Rules nad.Rules `json:"rules"`
	// RuntimeConfig carries the runtime's capability args (portMappings,
	// bandwidth) for the default network.
	RuntimeConfig map[string]any `json:"runtimeConfig,omitempty"`
}

// ParseConf reads the plugin's stdin configuration.
func ParseConf(stdin []byte) (*Conf, error) {
	c := &Conf{}
	if err := json.Unmarshal(stdin, c); err != nil {
		return nil, fmt.Errorf("evelet-cni: configuration: %w", err)
	}
	switch {
	case c.Delegate == "":
		return nil, fmt.Errorf("evelet-cni: configuration: \"delegate\" (the default network's name) is required")
	case c.ConfDir == "" || !filepath.IsAbs(c.ConfDir):
		return nil, fmt.Errorf("evelet-cni: configuration: \"confDir\" must be an absolute path")
	case c.StateDir == "" || !filepath.IsAbs(c.StateDir):
		return nil, fmt.Errorf("evelet-cni: configuration: \"stateDir\" must be an absolute path")
	}
	return c, nil
}

func (c *Conf) cacheDir() string   { return filepath.Join(c.StateDir, "attachments") }
func (c *Conf) resultsDir() string { return filepath.Join(c.StateDir, "results") }
