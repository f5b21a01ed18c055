package doctor

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

// CNI checks that the CNI plugins the device's networks name are in the
// plugin directories the agent was given: the default pod network's
// delegate (with --cni-bin-dir/--cni-conf-dir), what a
// NetworkAttachmentDefinition may use, and the VM pods' network.
func CNI(cfg Config) []Result {
	cfg.defaults()
	var out []Result
	r := Result{Check: "cni"}
	if cfg.CNIBinDir == "" || cfg.CNIConfDir == "" {
		out = append(out, ok(r, "evelet-cni is off (no --cni-bin-dir/--cni-conf-dir): containerd's own CNI configuration is the pod network"))
	} else {
		out = append(out, podNetwork(cfg, r), nadPlugins(cfg))
	}
	if cfg.VMPods {
		out = append(out, vmNetwork(cfg))
	}
	return out
}

// podNetwork: the delegate conflist exists and its plugins are installed.
func podNetwork(cfg Config, r Result) Result {
	confs, err := readConfs(cfg.CNIConfDir)
	if err != nil {
		return fail(r, err.Error(), "create --cni-conf-dir "+cfg.CNIConfDir+" with the default pod network's conflist")
	}
	def := cfg.DefaultNetwork
	var net *libcni.NetworkConfigList
	for _, c := range confs {
		if c.Name == def {
			net = c
		}
	}
	if net == nil {
		return fail(r, fmt.Sprintf("no CNI network named %q in %s: pods get no eth0", def, cfg.CNIConfDir),
			fmt.Sprintf("put the default pod network's conflist (\"name\": %q) in %s, or name another with --cni-default-network", def, cfg.CNIConfDir))
	}
	types := pluginTypes(net)
	if miss := missingPlugins(types, []string{cfg.CNIBinDir}, cfg.OwnPlugins); len(miss) > 0 {
		return fail(r, fmt.Sprintf("network %q needs %s, not in %s", def, strings.Join(miss, ", "), cfg.CNIBinDir),
			"install the CNI plugins "+strings.Join(miss, ", ")+" into "+cfg.CNIBinDir+" (Debian: containernetworking-plugins, which installs into /usr/lib/cni)")
	}
	return ok(r, fmt.Sprintf("default network %q (%s) in %s; plugins in %s", def, strings.Join(types, ","), cfg.CNIConfDir, cfg.CNIBinDir))
}

// nadPlugins: the plugins and IPAMs NetworkAttachmentDefinitions may name.
// A missing one fails only the pods that ask for it, so WARN.
func nadPlugins(cfg Config) Result {
	r := Result{Check: "cni-nad"}
	all := append(slices.Clone(cfg.NADPluginTypes), cfg.NADIPAMTypes...)
	if miss := missingPlugins(all, []string{cfg.CNIBinDir}, cfg.OwnPlugins); len(miss) > 0 {
		return warn(r, fmt.Sprintf("NetworkAttachmentDefinitions may use %s, not in %s: pods asking for them will not start", strings.Join(miss, ", "), cfg.CNIBinDir),
			"install "+strings.Join(miss, ", ")+" into "+cfg.CNIBinDir+", or leave them out of --cni-allowed-plugins/--cni-allowed-ipam (or the evelet.policy.cni-* config items)")
	}
	return ok(r, fmt.Sprintf("%s in %s", strings.Join(all, ","), cfg.CNIBinDir))
}

// vmNetwork: VM pods' own CNI configuration and its plugins.
func vmNetwork(cfg Config) Result {
	r := Result{Check: "cni-vm"}
	if cfg.VMCNIConfDir == "" {
		return ok(r, "no VM CNI configuration (--vm-cni-conf-dir/--cni-conf-dir): VM pods get loopback only")
	}
	confs, err := readConfs(cfg.VMCNIConfDir)
	if err != nil {
		return fail(r, err.Error(), "create "+cfg.VMCNIConfDir+" with VM pods' network conflist, or run the agent with --no-vm-pods")
	}
	if len(confs) == 0 {
		return fail(r, "no CNI configuration in "+cfg.VMCNIConfDir+": VM pods get no network",
			"put VM pods' network conflist in "+cfg.VMCNIConfDir+" (the same as containerd's)")
	}
	// libcni uses the first file in name order, as containerd does.
	types := pluginTypes(confs[0])
	if miss := missingPlugins(types, cfg.VMCNIBinDirs, cfg.OwnPlugins); len(miss) > 0 {
		return fail(r, fmt.Sprintf("VM network %q needs %s, not in %s", confs[0].Name, strings.Join(miss, ", "), strings.Join(cfg.VMCNIBinDirs, ",")),
			"install the CNI plugins "+strings.Join(miss, ", ")+" into "+strings.Join(cfg.VMCNIBinDirs, ",")+", or point --vm-cni-bin-dir where they are")
	}
	return ok(r, fmt.Sprintf("VM network %q (%s); plugins in %s", confs[0].Name, strings.Join(types, ","), strings.Join(cfg.VMCNIBinDirs, ",")))
}

func readConfs(dir string) ([]*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(dir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil, fmt.Errorf("CNI conf dir %s: %w", dir, err)
	}
	if files == nil && !exists(dir) {
		return nil, fmt.Errorf("CNI conf dir %s does not exist", dir)
	}
	slices.Sort(files)
	var out []*libcni.NetworkConfigList
	for _, f := range files {
		c, err := libcni.NetworkConfFromFile(f)
		if err != nil {
			return nil, fmt.Errorf("CNI configuration %s: %w", f, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// pluginTypes are the plugin and IPAM types a network runs.
func pluginTypes(n *libcni.NetworkConfigList) []string {
	var ts []string
	for _, p := range n.Plugins {
		if p.Network == nil {
			continue
		}
		ts = append(ts, p.Network.Type)
		if p.Network.IPAM.Type != "" {
			ts = append(ts, p.Network.IPAM.Type)
		}
	}
	return ts
}

func missingPlugins(types, dirs, own []string) []string {
	var miss []string
	for _, t := range types {
		if t == "" || slices.Contains(own, t) || slices.Contains(miss, t) {
			continue
		}
		found := false
		for _, d := range dirs {
			if st, err := os.Stat(filepath.Join(d, t)); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
				found = true
			}
		}
		if !found {
			miss = append(miss, t)
		}
	}
	return miss
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }
