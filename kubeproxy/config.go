// Package kubeproxy is the node's share of Kubernetes Services: the
// configuration of the vendored kube-proxy (k8s.io/kubernetes
// cmd/kube-proxy, run as `evelet kube-proxy`), its supervision by the agent,
// and the removal of its rules when the node leaves (docs/services.md).
package kubeproxy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	proxyv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/lf-edge/evelet/internal/atomicfile"
)

// Options are what evelet decides about the kube-proxy it runs.
type Options struct {
	// NodeName is the Node kube-proxy serves (its hostnameOverride).
	NodeName string
	// Kubeconfig is how kube-proxy reaches the apiserver: the node's own
	// credentials today, the node's local caching proxy once it exists.
	Kubeconfig string
	// ConfigFile is where WriteConfig puts the KubeProxyConfiguration.
	ConfigFile string
	// ClusterCIDR is the cluster's pod range, when evelet knows it; empty:
	// kube-proxy masquerades only what it always does (NodePorts), and
	// pod egress is the pod network's (docs/services.md).
	ClusterCIDR string
	// HealthzBindAddress and MetricsBindAddress ("": 127.0.0.1:10256 and
	// 127.0.0.1:10249). Loopback: nothing of the device's is opened to
	// the networks EVE gives it beyond the NodePorts the cluster asks for.
	HealthzBindAddress, MetricsBindAddress string
}

// Mode is the proxy mode evelet runs: nftables, in kube-proxy's own
// tables (docs/services.md says why not iptables).
const Mode = "nftables"

// Tables are the nftables tables kube-proxy's nftables mode makes, one
// per IP family; they are kube-proxy's only state in the kernel.
var Tables = []struct{ Family, Name string }{{"ip", "kube-proxy"}, {"ip6", "kube-proxy"}}

// Config is the KubeProxyConfiguration for o.
func (o *Options) Config() (*proxyv1alpha1.KubeProxyConfiguration, error) {
	if o.NodeName == "" || o.Kubeconfig == "" {
		return nil, errors.New("kube-proxy: node name and kubeconfig are required")
	}
	c := &proxyv1alpha1.KubeProxyConfiguration{
		TypeMeta: metav1.TypeMeta{APIVersion: proxyv1alpha1.SchemeGroupVersion.String(), Kind: "KubeProxyConfiguration"},
		Mode:     Mode,
		// The node's name, not the host name: EVE's host name is not the
		// Node's name, and kube-proxy finds its Node (addresses, topology)
		// by it.
		HostnameOverride:   o.NodeName,
		HealthzBindAddress: o.HealthzBindAddress,
		MetricsBindAddress: o.MetricsBindAddress,
		// NodePorts on the node's primary address only (the InternalIP the
		// kubelet reports), never on every address EVE's other networks
		// give the device.
		NodePortAddresses: []string{"primary"},
		ClusterCIDR:       o.ClusterCIDR,
		// kube-proxy's conntrack defaults write host-wide sysctls
		// (nf_conntrack_max, TCP timeouts) that belong to EVE; zero
		// leaves each one as EVE set it.
		Conntrack: proxyv1alpha1.KubeProxyConntrackConfiguration{
			MaxPerCore:            ptr.To[int32](0),
			Min:                   ptr.To[int32](0),
			TCPEstablishedTimeout: &metav1.Duration{},
			TCPCloseWaitTimeout:   &metav1.Duration{},
		},
	}
	c.ClientConnection.Kubeconfig = o.Kubeconfig
	if c.HealthzBindAddress == "" {
		c.HealthzBindAddress = "127.0.0.1:10256"
	}
	if c.MetricsBindAddress == "" {
		c.MetricsBindAddress = "127.0.0.1:10249"
	}
	if c.ClusterCIDR != "" {
		c.DetectLocalMode = "ClusterCIDR"
	}
	return c, nil
}

// WriteConfig writes the configuration file (temp-then-rename, 0600: it
// names the credentials).
func (o *Options) WriteConfig() error {
	c, err := o.Config()
	if err != nil {
		return err
	}
	b, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Errorf("kube-proxy config: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(o.ConfigFile), 0o700); err != nil {
		return fmt.Errorf("kube-proxy config: %w", err)
	}
	return atomicfile.WriteFile(o.ConfigFile, b, 0o600)
}

// Args is `evelet kube-proxy`'s command line.
func (o *Options) Args() []string { return []string{"--config=" + o.ConfigFile} }
