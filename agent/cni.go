package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/cni/meta"
	"github.com/lf-edge/evelet/cni/nad"
	"github.com/lf-edge/evelet/internal/atomicfile"
	"github.com/lf-edge/evelet/internal/layout"
)

// CNIOptions turn on multi-network pods (docs/networks.md): the agent
// installs evelet-cni and eve-ni into the runtime's CNI bin dir and makes
// evelet-cni the pod network. Off while BinDir and ConfDir are empty.
type CNIOptions struct {
	BinDir, ConfDir string
	// DefaultNetwork is the network name of the default pod network's
	// conflist in ConfDir (evelet-cni's delegate for eth0).
	DefaultNetwork string
	// PluginTypes and IPAMTypes are what a NetworkAttachmentDefinition may
	// use (nad.Rules); SharedNamespaces may be used from any namespace.
	PluginTypes, IPAMTypes, SharedNamespaces []string
	// GCInterval is how often the agent sends the pod network a CNI GC
	// (cnigc.go); 0: never. The flag's default is CNIGCInterval.
	GCInterval time.Duration
}

// Defaults of CNIOptions: a NAD may only use eve-ni, which applies the
// device owner's network-instance policy; other plugins (macvlan or
// host-device on a host NIC) would hand host networks to the tenant.
var (
	DefaultCNIPluginTypes = []string{"eve-ni"}
	DefaultCNIIPAMTypes   = []string{"static", "dhcp", "host-local"}
)

const (
	// CNIConflistName sorts before any other conflist, so a runtime that
	// loads one network (containerd's max_conf_num = 1) loads evelet-cni.
	CNIConflistName = "00-evelet.conflist"
	cniNetworkName  = "evelet"
)

func (o *CNIOptions) enabled() bool { return o.BinDir != "" && o.ConfDir != "" }

// cniPlugins are the binaries installed next to the running evelet.
var cniPlugins = []struct {
	name     string
	required bool
}{{meta.PluginType, true}, {"eve-ni", false}}

// setupCNI installs the plugins, writes or removes the evelet-network
// kubeconfig from j's networkToken, and writes the conflist.
func (a *Agent) setupCNI(j *intent.Join) error {
	o := a.cfg.CNI
	if !o.enabled() {
		return nil
	}
	if err := a.installCNIPlugins(); err != nil {
		return err
	}
	st := layout.State{Dir: a.cfg.StateDir}
	if err := os.MkdirAll(st.CNI().Dir, 0o700); err != nil {
		return fmt.Errorf("cni: %w", err)
	}
	if err := a.writeNetworkKubeconfig(j); err != nil {
		return err
	}
	def := a.defaultNetworkName()
	conf := map[string]any{
		"cniVersion": "1.0.0", // what containerd 1.6's libcni reads; the plugin speaks up to 1.1.0
		"name":       cniNetworkName,
		"plugins": []any{map[string]any{
			"type":           meta.PluginType,
			"delegate":       def,
			"confDir":        o.ConfDir,
			"stateDir":       st.CNI().MetaState(),
			"kubeconfig":     st.CNI().NetworkKubeconfig(),
			"nodeKubeconfig": st.Credentials().Kubeconfig(),
			"nodeName":       j.NodeName,
			"rules":          a.cniRules(),
			"eveniConfig":    a.cfg.EveNISettingsFile(),
			// The runtime's hostPort and bandwidth reach the default network.
			"capabilities": map[string]bool{"portMappings": true, "bandwidth": true},
		}},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(o.ConfDir, CNIConflistName), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("cni: %w", err)
	}
	a.log.WithFields(map[string]any{"conf": filepath.Join(o.ConfDir, CNIConflistName), "delegate": def,
		"networkCredential": j.NetworkToken != ""}).Info("evelet-cni is the pod network")
	return nil
}

// cniRules are the NAD rules in force: the owner's evelet.policy.cni-*
// config items where set, else the agent's flags, else the defaults.
func (a *Agent) cniRules() nad.Rules {
	o, p := a.cfg.CNI, a.policy().NetworkRules
	pick := func(item, flag, def []string) []string {
		switch {
		case item != nil:
			return item
		case flag != nil:
			return flag
		}
		return def
	}
	return nad.Rules{
		SharedNamespaces: pick(p.CNISharedNamespaces, o.SharedNamespaces, nil),
		PluginTypes:      pick(p.CNIPluginTypes, o.PluginTypes, DefaultCNIPluginTypes),
		IPAMTypes:        pick(p.CNIIPAMTypes, o.IPAMTypes, DefaultCNIIPAMTypes),
	}
}

// refreshCNIRules puts the rules in force into the written conflist, so a
// change of the owner's config items applies from the next ADD on (the
// conflist is read at every CNI call). Nothing before setupCNI wrote one.
func (a *Agent) refreshCNIRules() {
	o := a.cfg.CNI
	if !o.enabled() {
		return
	}
	path := filepath.Join(o.ConfDir, CNIConflistName)
	raw, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var conf map[string]any
	if err := json.Unmarshal(raw, &conf); err != nil {
		a.log.WithError(err).Error("cni: conflist unreadable; NAD rules not updated")
		return
	}
	plugins, _ := conf["plugins"].([]any)
	if len(plugins) != 1 {
		return
	}
	pl, _ := plugins[0].(map[string]any)
	if pl == nil {
		return
	}
	pl["rules"] = a.cniRules()
	b, err := json.MarshalIndent(conf, "", "  ")
	if err == nil {
		err = atomicfile.WriteFile(path, append(b, '\n'), 0o644)
	}
	if err != nil {
		a.log.WithError(err).Error("cni: NAD rules not updated")
	}
}

// installCNIPlugins copies the plugin binaries next to the running evelet
// into BinDir (temp-then-rename, so the runtime never runs a torn binary),
// skipping copies already identical.
func (a *Agent) installCNIPlugins() error {
	srcDir := filepath.Dir(a.cfg.Self)
	for _, p := range cniPlugins {
		src := filepath.Join(srcDir, p.name)
		b, err := os.ReadFile(src)
		if errors.Is(err, os.ErrNotExist) && !p.required {
			a.log.WithField("plugin", src).Warn("CNI plugin not built; NADs of that type will fail")
			continue
		}
		if err != nil {
			return fmt.Errorf("cni: plugin %s: %w (make build puts it next to bin/evelet)", p.name, err)
		}
		dst := filepath.Join(a.cfg.CNI.BinDir, p.name)
		if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, b) {
			continue
		}
		if err := os.MkdirAll(a.cfg.CNI.BinDir, 0o755); err != nil {
			return fmt.Errorf("cni: %w", err)
		}
		if err := atomicfile.WriteFile(dst, b, 0o755); err != nil {
			return fmt.Errorf("cni: install %s: %w", p.name, err)
		}
	}
	return nil
}

// writeNetworkKubeconfig writes the evelet-network credential: the node's
// cluster entry (server and CA) with the ServiceAccount token. Without a
// token in the join material any old one is removed, so a revoked
// credential does not linger.
func (a *Agent) writeNetworkKubeconfig(j *intent.Join) error {
	path := layout.State{Dir: a.cfg.StateDir}.CNI().NetworkKubeconfig()
	if j.NetworkToken == "" {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("cni: %w", err)
		}
		return nil
	}
	creds := layout.State{Dir: a.cfg.StateDir}.Credentials()
	var cluster *clientcmdapi.Cluster
	for _, p := range []string{creds.Kubeconfig(), creds.BootstrapKubeconfig()} {
		cfg, err := clientcmd.LoadFromFile(p)
		if err != nil {
			continue
		}
		if ctx := cfg.Contexts[cfg.CurrentContext]; ctx != nil && cfg.Clusters[ctx.Cluster] != nil {
			cluster = cfg.Clusters[ctx.Cluster]
			break
		}
	}
	if cluster == nil {
		return fmt.Errorf("cni: no node kubeconfig to take the cluster's server and CA from")
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["cluster"] = cluster
	cfg.AuthInfos["evelet-network"] = &clientcmdapi.AuthInfo{Token: j.NetworkToken}
	cfg.Contexts["evelet-network"] = &clientcmdapi.Context{Cluster: "cluster", AuthInfo: "evelet-network"}
	cfg.CurrentContext = "evelet-network"
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("cni: %w", err)
	}
	if err := atomicfile.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("cni: %w", err)
	}
	return nil
}

// removeNetworkCredential drops the evelet-network kubeconfig when the
// device leaves its cluster, with the other credentials.
func (a *Agent) removeNetworkCredential() error {
	err := os.Remove(layout.State{Dir: a.cfg.StateDir}.CNI().NetworkKubeconfig())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
