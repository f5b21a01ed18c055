package agent

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/lf-edge/evelet/bootstrap/intent"
	kubeletshim "github.com/lf-edge/evelet/kubelet-shim"
	"github.com/lf-edge/evelet/kubeproxy"
)

// TestKubeProxyChild: the agent starts `evelet kube-proxy` with the config
// it wrote (the node's name, the node's kubeconfig) and a PATH holding only
// kube-proxy's own bin dir, so kube-proxy runs no modprobe or iptables.
func TestKubeProxyChild(t *testing.T) {
	tools := t.TempDir()
	if err := os.WriteFile(filepath.Join(tools, "nft"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", tools)
	dir := t.TempDir()
	a := New(Config{StateDir: filepath.Join(dir, "persist"), RunDir: filepath.Join(dir, "run"), Self: "/usr/bin/evelet",
		Source: &JoinFile{Path: filepath.Join(dir, "join.yaml")}, KubeProxy: KubeProxyConfig{Enabled: true}})
	p, err := a.kubeProxy(&intent.Join{NodeName: "eve-1"}, logrus.NewEntry(logrus.New()))
	if err != nil {
		t.Fatal(err)
	}
	sup := p.(*kubeletshim.Supervisor)
	cmd := sup.Command()
	conf := filepath.Join(dir, "run", "kube-proxy", "config.yaml")
	if want := []string{"/usr/bin/evelet-kube-proxy", "kube-proxy", "--config=" + conf}; !slices.Equal(cmd.Args, want) {
		t.Errorf("kube-proxy command %v, want %v", cmd.Args, want)
	}
	if want := []string{"PATH=" + filepath.Join(dir, "run", "kube-proxy", "bin")}; !slices.Equal(cmd.Env, want) {
		t.Errorf("kube-proxy environment %v, want %v", cmd.Env, want)
	}
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"hostnameOverride: eve-1", "kubeconfig: " + a.cfg.Credentials().KubeconfigPath(), "mode: nftables"} {
		if !slices.Contains(splitLines(string(b)), s) {
			t.Errorf("config lacks %q:\n%s", s, b)
		}
	}
}

func splitLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		out = append(out, strings.TrimSpace(l))
	}
	return out
}

// TestKubeProxyConfigItem: the owner's evelet.kube-proxy item turns
// kube-proxy on or off whatever --kube-proxy says; a refused value leaves
// the flag in force and is reported.
func TestKubeProxyConfigItem(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		flag bool
		item string // "": unset
		want bool
	}{
		{false, "", false}, {true, "", true},
		{false, "true", true}, {true, "false", false},
		{true, "on", true}, {false, "on", false},
	} {
		a := New(Config{StateDir: filepath.Join(dir, "persist"), RunDir: filepath.Join(dir, "run"),
			Source: &JoinFile{Path: filepath.Join(dir, "join.yaml")}, KubeProxy: KubeProxyConfig{Enabled: c.flag}})
		if c.item != "" {
			a.items = map[string]string{kubeproxy.ItemEnabled: c.item}
		}
		if got := a.kubeProxyEnabled(); got != c.want {
			t.Errorf("flag %v, item %q: kube-proxy on = %v, want %v", c.flag, c.item, got, c.want)
		}
		a.publishConfigErrors(a.items)
		refused := slices.ContainsFunc(a.status.ConfigErrors, func(s string) bool { return strings.Contains(s, kubeproxy.ItemEnabled) })
		if refused != (c.item == "on") {
			t.Errorf("item %q: config errors %v", c.item, a.status.ConfigErrors)
		}
	}
}
