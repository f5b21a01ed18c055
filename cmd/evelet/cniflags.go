package main

import (
	"flag"
	"strings"

	"github.com/lf-edge/evelet/agent"
)

// cniFlags registers the multi-network flags of `evelet agent`
// (docs/networks.md). Both directories empty: off.
func cniFlags(fs *flag.FlagSet, o *agent.CNIOptions) {
	fs.StringVar(&o.BinDir, "cni-bin-dir", "", "the runtime's CNI bin dir: install evelet-cni and eve-ni there and make evelet-cni the pod network (with --cni-conf-dir; empty: off)")
	fs.StringVar(&o.ConfDir, "cni-conf-dir", "", "the runtime's CNI conf dir: evelet-cni's conflist goes there, the default network's conflist is read from there")
	fs.StringVar(&o.DefaultNetwork, "cni-default-network", "evelet-default", "network name of the default pod network's conflist in --cni-conf-dir (eth0 of every pod)")
	fs.Func("cni-allowed-plugins", "comma-separated CNI plugin types a NetworkAttachmentDefinition may use (default eve-ni)", list(&o.PluginTypes))
	fs.Func("cni-allowed-ipam", "comma-separated IPAM types a NetworkAttachmentDefinition may use (default static,dhcp,host-local)", list(&o.IPAMTypes))
	fs.DurationVar(&o.GCInterval, "cni-gc-interval", agent.CNIGCInterval, "how often the agent sends the pod network a CNI GC for sandboxes no runtime lists (containerd 1.6 never does; 0: never)")
	fs.Func("cni-shared-namespaces", "comma-separated namespaces whose NetworkAttachmentDefinitions pods of any namespace may use (default: none, a pod uses its own namespace's)", list(&o.SharedNamespaces))
}

func list(dst *[]string) func(string) error {
	return func(s string) error {
		*dst = []string{}
		for _, x := range strings.Split(s, ",") {
			if x = strings.TrimSpace(x); x != "" {
				*dst = append(*dst, x)
			}
		}
		return nil
	}
}
