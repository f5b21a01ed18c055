package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/lf-edge/evelet/bootstrap"
	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/cni/meta"
	"github.com/lf-edge/evelet/cni/nad"
	"github.com/lf-edge/evelet/internal/layout"
	"github.com/lf-edge/evelet/policy"
)

func cniAgent(t *testing.T) (*Agent, string) {
	dir := t.TempDir()
	self := filepath.Join(dir, "bin", "evelet")
	if err := os.MkdirAll(filepath.Dir(self), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"evelet", "evelet-cni"} {
		if err := os.WriteFile(filepath.Join(filepath.Dir(self), f), []byte("#!/bin/sh\n# "+f+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	state := filepath.Join(dir, "state")
	boot := `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://10.0.0.1:6443", certificate-authority-data: "` + "Y2E=" + `"}}]
users: [{name: u, user: {token: "abcdef.0123456789abcdef"}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`
	if err := os.MkdirAll(layout.State{Dir: state}.Credentials().Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(layout.State{Dir: state}.Credentials().BootstrapKubeconfig(), []byte(boot), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: Config{StateDir: state, Self: self, CNI: CNIOptions{
		BinDir: filepath.Join(dir, "cni-bin"), ConfDir: filepath.Join(dir, "net.d")}},
		log: logrus.NewEntry(logrus.New())}
	return a, dir
}

func TestSetupCNI(t *testing.T) {
	a, dir := cniAgent(t)
	j := &intent.Join{NodeName: "node1", DeviceUUID: "u", Material: bootstrap.Material{NetworkToken: "eyJ.net.tok"}}
	if err := a.setupCNI(j); err != nil {
		t.Fatal(err)
	}
	// The plugin is installed executable; eve-ni, not built, is skipped.
	if fi, err := os.Stat(filepath.Join(dir, "cni-bin", "evelet-cni")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("evelet-cni not installed: %v %v", fi, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cni-bin", "eve-ni")); !os.IsNotExist(err) {
		t.Fatalf("eve-ni: %v", err)
	}
	// The conflist is one evelet-cni plugin whose configuration the
	// plugin accepts, with the least-privilege defaults.
	raw, err := os.ReadFile(filepath.Join(dir, "net.d", CNIConflistName))
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Plugins []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(raw, &list); err != nil || len(list.Plugins) != 1 {
		t.Fatalf("conflist: %v %s", err, raw)
	}
	c, err := meta.ParseConf(list.Plugins[0])
	if err != nil {
		t.Fatal(err)
	}
	st := layout.State{Dir: a.cfg.StateDir}
	if c.Type != "evelet-cni" || c.Delegate != "evelet-default" || c.NodeName != "node1" || c.Kubeconfig != st.CNI().NetworkKubeconfig() ||
		strings.Join(c.Rules.PluginTypes, ",") != "eve-ni" || len(c.Rules.SharedNamespaces) != 0 || c.StateDir != st.CNI().MetaState() {
		t.Fatalf("conf %+v", c)
	}
	// The credential: 0600, the node's cluster, the token.
	fi, err := os.Stat(c.Kubeconfig)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("kubeconfig: %v %v", fi, err)
	}
	kc, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cl := kc.Clusters[kc.Contexts[kc.CurrentContext].Cluster]
	if cl.Server != "https://10.0.0.1:6443" || string(cl.CertificateAuthorityData) != "ca" || kc.AuthInfos[kc.Contexts[kc.CurrentContext].AuthInfo].Token != "eyJ.net.tok" {
		t.Fatalf("kubeconfig %+v", kc)
	}
	// A join without the token removes the credential; leaving too.
	j.NetworkToken = ""
	if err := a.setupCNI(j); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Kubeconfig); !os.IsNotExist(err) {
		t.Fatalf("credential kept without a token: %v", err)
	}
	j.NetworkToken = "x"
	if err := a.setupCNI(j); err != nil {
		t.Fatal(err)
	}
	if err := a.removeNetworkCredential(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Kubeconfig); !os.IsNotExist(err) {
		t.Fatalf("credential kept after leave: %v", err)
	}
}

func TestSetupCNIOffAndMissingPlugin(t *testing.T) {
	a, dir := cniAgent(t)
	j := &intent.Join{NodeName: "n"}
	on := a.cfg.CNI
	a.cfg.CNI = CNIOptions{}
	if err := a.setupCNI(j); err != nil {
		t.Fatal(err)
	}
	a.cfg.CNI = on
	if _, err := os.Stat(filepath.Join(dir, "net.d")); !os.IsNotExist(err) {
		t.Fatal("off, but the conf dir was touched")
	}
	os.Remove(filepath.Join(dir, "bin", "evelet-cni"))
	if err := a.setupCNI(j); err == nil || !strings.Contains(err.Error(), "evelet-cni") {
		t.Fatalf("missing plugin: %v", err)
	}
}

func TestSameExceptTokenIgnoresNetworkToken(t *testing.T) {
	x := &intent.Join{NodeName: "n", Material: bootstrap.Material{Token: "a", NetworkToken: "1"}}
	y := &intent.Join{NodeName: "n", Material: bootstrap.Material{Token: "b", NetworkToken: "2"}}
	if !sameExceptToken(x, y) {
		t.Fatal("a new network token restarts the join")
	}
}

// The owner's evelet.policy.cni-* items set the NAD rules over the
// agent's flags, and a change reaches the written conflist.
func TestCNIRulesFromConfigItems(t *testing.T) {
	a, dir := cniAgent(t)
	a.cfg.CNI.PluginTypes = []string{"eve-ni", "macvlan"} // the flag
	if err := a.setupCNI(&intent.Join{NodeName: "node1", DeviceUUID: "u"}); err != nil {
		t.Fatal(err)
	}
	rules := func() nad.Rules {
		raw, err := os.ReadFile(filepath.Join(dir, "net.d", CNIConflistName))
		if err != nil {
			t.Fatal(err)
		}
		var list struct {
			Plugins []struct {
				Rules nad.Rules `json:"rules"`
			} `json:"plugins"`
		}
		if err := json.Unmarshal(raw, &list); err != nil {
			t.Fatal(err)
		}
		return list.Plugins[0].Rules
	}
	if r := rules(); !reflect.DeepEqual(r.PluginTypes, []string{"eve-ni", "macvlan"}) || !reflect.DeepEqual(r.IPAMTypes, DefaultCNIIPAMTypes) {
		t.Fatalf("flags: %+v", r)
	}
	a.mu.Lock()
	a.items = map[string]string{policy.KeyCNIPlugins: "eve-ni", policy.KeyCNIIPAM: "none", policy.KeyCNISharedNamespaces: "shared"}
	a.mu.Unlock()
	a.refreshCNIRules()
	// "none": no IPAM type (the list is left out, which nad.Rules reads as none).
	if r := rules(); !reflect.DeepEqual(r.PluginTypes, []string{"eve-ni"}) || len(r.IPAMTypes) != 0 || !reflect.DeepEqual(r.SharedNamespaces, []string{"shared"}) {
		t.Fatalf("config items: %+v", r)
	}
}
