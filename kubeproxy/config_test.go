package kubeproxy

import (
	"os"
	"path/filepath"
	"testing"

	proxyconfig "k8s.io/kubernetes/pkg/proxy/apis/config"
	proxyconfigscheme "k8s.io/kubernetes/pkg/proxy/apis/config/scheme"
	"k8s.io/kubernetes/pkg/proxy/apis/config/validation"
)

// TestConfigLoadsAsKubeProxyLoadsIt decodes the written file the way
// kube-proxy does (its scheme's strict decoder, defaults applied), validates
// it with kube-proxy's own validation, and checks what evelet decides:
// nftables, the Node's name, NodePorts on the primary address only, health
// and metrics on loopback, and no host-wide conntrack sysctl written
// (kube-proxy's defaults would set nf_conntrack_max from 32768 per core
// and two TCP timeouts).
func TestConfigLoadsAsKubeProxyLoadsIt(t *testing.T) {
	dir := t.TempDir()
	o := &Options{NodeName: "eve-node-1", Kubeconfig: "/persist/evelet/credentials/kubeconfig", ConfigFile: filepath.Join(dir, "sub", "config.yaml")}
	if err := o.WriteConfig(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(o.ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("config file mode %v, want 0600", fi.Mode().Perm())
	}
	data, err := os.ReadFile(o.ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	obj, _, err := proxyconfigscheme.Codecs.UniversalDecoder().Decode(data, nil, nil)
	if err != nil {
		t.Fatalf("kube-proxy's strict decoder refuses the file: %v\n%s", err, data)
	}
	c := obj.(*proxyconfig.KubeProxyConfiguration)
	if errs := validation.Validate(c); len(errs) > 0 {
		t.Fatalf("kube-proxy's validation refuses the file: %v", errs.ToAggregate())
	}
	if c.Mode != proxyconfig.ProxyModeNFTables {
		t.Errorf("mode %q, want nftables", c.Mode)
	}
	if c.HostnameOverride != "eve-node-1" {
		t.Errorf("hostnameOverride %q, want the node name", c.HostnameOverride)
	}
	if c.ClientConnection.Kubeconfig != o.Kubeconfig {
		t.Errorf("kubeconfig %q, want %q", c.ClientConnection.Kubeconfig, o.Kubeconfig)
	}
	if len(c.NodePortAddresses) != 1 || c.NodePortAddresses[0] != "primary" {
		t.Errorf("nodePortAddresses %v, want [primary]", c.NodePortAddresses)
	}
	if c.HealthzBindAddress != "127.0.0.1:10256" || c.MetricsBindAddress != "127.0.0.1:10249" {
		t.Errorf("healthz %q, metrics %q: want both on loopback", c.HealthzBindAddress, c.MetricsBindAddress)
	}
	ct := c.Linux.Conntrack
	if ct.MaxPerCore == nil || *ct.MaxPerCore != 0 {
		t.Errorf("conntrack maxPerCore %v, want 0 (leave nf_conntrack_max as EVE set it)", ct.MaxPerCore)
	}
	if ct.TCPEstablishedTimeout == nil || ct.TCPEstablishedTimeout.Duration != 0 ||
		ct.TCPCloseWaitTimeout == nil || ct.TCPCloseWaitTimeout.Duration != 0 ||
		ct.UDPTimeout.Duration != 0 || ct.UDPStreamTimeout.Duration != 0 || ct.TCPBeLiberal {
		t.Errorf("conntrack %+v: want every timeout left as EVE set it", ct)
	}
	if len(c.DetectLocal.ClusterCIDRs) != 0 {
		t.Errorf("clusterCIDRs %v, want none (evelet does not know the cluster's pod range)", c.DetectLocal.ClusterCIDRs)
	}
}

func TestConfigNeedsNodeAndKubeconfig(t *testing.T) {
	for _, o := range []Options{{NodeName: "n"}, {Kubeconfig: "k"}} {
		if _, err := o.Config(); err == nil {
			t.Errorf("Config(%+v) = nil error, want one", o)
		}
	}
}
