package meta

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netns"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"

	kruntime "k8s.io/apimachinery/pkg/runtime"

	"github.com/lf-edge/evelet/cni/annotation"
	"github.com/lf-edge/evelet/cni/nad"
)

const cniBinDir = "/usr/lib/cni"

// env is one test's world: a throwaway "host" netns the delegates run in
// (bridges, IPAM, iptables stay there), a conf dir with the default
// network, a fake apiserver for pods and NADs, and the plugin.
type env struct {
	id       string // short random suffix for names
	prefix   string // of netns names
	hostNS   string // netns name
	confDir  string
	stateDir string
	ipamDir  string
	pods     *fakePods
	nads     *nad.Resolver
	apiDown  bool
	p        *Plugin
	conf     []byte
}

func needRoot(t testing.TB) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and runs the CNI bridge plugin")
	}
	for _, b := range []string{"bridge", "host-local", "macvlan", "static", "tuning"} {
		if _, err := os.Stat(filepath.Join(cniBinDir, b)); err != nil {
			t.Skipf("CNI plugin %s missing in %s (hack/install-prereqs.sh installs containernetworking-plugins)", b, cniBinDir)
		}
	}
}

func ip(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func addNetns(t testing.TB, name string) string {
	ip(t, "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return "/run/netns/" + name
}

func randID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func newEnv(t testing.TB) *env { return newEnvNamed(t, "h6") }

// newEnvNamed names the test's network namespaces <prefix>-h<id> and
// <prefix>-c<id><pod>.
func newEnvNamed(t testing.TB, prefix string) *env {
	needRoot(t)
	e := &env{id: randID(), prefix: prefix}
	e.hostNS = prefix + "-h" + e.id
	addNetns(t, e.hostNS)
	ip(t, "-n", e.hostNS, "link", "set", "lo", "up")
	ip(t, "-n", e.hostNS, "link", "add", "h6d0", "type", "veth", "peer", "name", "h6d1") // no dummy module here
	ip(t, "-n", e.hostNS, "link", "set", "h6d0", "up")
	dir := t.TempDir()
	e.confDir, e.stateDir, e.ipamDir = filepath.Join(dir, "net.d"), filepath.Join(dir, "state"), filepath.Join(dir, "ipam")
	for _, d := range []string{e.confDir, e.stateDir, e.ipamDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	def := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"h6-default","plugins":[{"type":"bridge","bridge":"h6br0","isGateway":true,
	  "ipam":{"type":"host-local","ranges":[[{"subnet":"10.206.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":%q}},
	  {"type":"portmap","capabilities":{"portMappings":true}}]}`, e.ipamDir)
	if err := os.WriteFile(filepath.Join(e.confDir, "10-h6-default.conflist"), []byte(def), 0o644); err != nil {
		t.Fatal(err)
	}
	e.pods = &fakePods{pods: map[string]*Pod{}, node: "node1"}
	s := kruntime.NewScheme()
	dc := dynfake.NewSimpleDynamicClientWithCustomListKinds(s, map[schema.GroupVersionResource]string{nad.GVR: "NetworkAttachmentDefinitionList"})
	e.nads = &nad.Resolver{Client: dc, ConfDir: e.confDir, Self: PluginType, Rules: nad.Rules{
		PluginTypes: []string{"bridge", "macvlan", "tuning", "bandwidth"}, IPAMTypes: []string{"host-local", "static"}}}
	// Extra networks: bridges with host-local (leases in host-local's
	// default dir under a per-test network name), and a macvlan on the
	// host netns' dummy with static IPAM and tuning for the MAC.
	for i := 1; i <= 4; i++ {
		e.addNAD(t, fmt.Sprintf("br%d", i), fmt.Sprintf(`{"cniVersion":"1.0.0","name":"h6-%s-br%d","type":"bridge","bridge":"h6br%d",
		  "ipam":{"type":"host-local","subnet":"10.206.%d.0/24"}}`, e.id, i, i, 10+i))
	}
	e.addNAD(t, "mv", fmt.Sprintf(`{"cniVersion":"1.0.0","name":"h6-%s-mv","plugins":[
	  {"type":"macvlan","master":"h6d0","mode":"bridge","ipam":{"type":"static"},"capabilities":{"ips":true}},
	  {"type":"tuning","capabilities":{"mac":true}}]}`, e.id))
	// broken attaches (veth + lease) and then fails in its second plugin,
	// so undoing it must free what its first plugin did.
	e.addNAD(t, "broken", fmt.Sprintf(`{"cniVersion":"1.0.0","name":"h6-%s-broken","plugins":[
	  {"type":"bridge","bridge":"h6br9","ipam":{"type":"host-local","subnet":"10.206.30.0/24"}},
	  {"type":"tuning","sysctl":{"net.ipv4.conf.bad0.h6_no_such_sysctl":"1"}}]}`, e.id))
	// undeletable's bandwidth plugin refuses its own configuration (a
	// rate without a burst) on ADD and on every DEL.
	e.addNAD(t, "undeletable", fmt.Sprintf(`{"cniVersion":"1.0.0","name":"h6-%s-undeletable","plugins":[
	  {"type":"bridge","bridge":"h6br8","ipam":{"type":"host-local","subnet":"10.206.31.0/24"}},
	  {"type":"bandwidth","ingressRate":1000000}]}`, e.id))
	e.addNAD(t, "notjson", `{"cniVersion":`)
	e.p = &Plugin{Log: logrus.NewEntry(logrus.New()), Clients: func(*Conf) (*Clients, error) {
		if e.apiDown {
			return nil, fmt.Errorf("apiserver unreachable (test)")
		}
		return &Clients{Pods: e.pods, NADs: e.nads, CanAnnotate: true}, nil
	}}
	e.conf, _ = json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": "evelet", "type": PluginType,
		"delegate": "h6-default", "confDir": e.confDir, "stateDir": e.stateDir, "nodeName": "node1", "rules": e.nads.Rules})
	t.Cleanup(func() {
		for _, d := range []string{"br1", "br2", "br3", "br4", "mv", "broken", "undeletable"} {
			os.RemoveAll(filepath.Join("/var/lib/cni/networks", "h6-"+e.id+"-"+d))
		}
	})
	return e
}

func (e *env) addNAD(t testing.TB, name, config string) {
	u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
		"metadata": map[string]any{"namespace": "pods", "name": name}, "spec": map[string]any{"config": config}}}
	if err := e.nads.Client.(*dynfake.FakeDynamicClient).Tracker().Create(nad.GVR, u, "pods"); err != nil {
		t.Fatal(err)
	}
}

// sandbox makes a pod's netns and registers the pod with its annotation.
func (e *env) sandbox(t testing.TB, name, networks string) *skel.CmdArgs {
	path := addNetns(t, e.prefix+"-c"+e.id+name)
	uid := "uid-" + name
	p := &Pod{UID: uid, NodeName: "node1", Annotations: map[string]string{}}
	if networks != "" {
		p.Annotations[annotation.NetworksKey] = networks
	}
	e.pods.set("pods", name, p)
	return &skel.CmdArgs{ContainerID: "cid" + e.id + name, Netns: path, IfName: "eth0", Path: cniBinDir,
		Args:      "IgnoreUnknown=1;K8S_POD_NAMESPACE=pods;K8S_POD_NAME=" + name + ";K8S_POD_UID=" + uid,
		StdinData: e.conf}
}

// inHost runs f on a thread in the host netns, so the delegates the
// plugin starts run there.
func (e *env) inHost(f func() error) error {
	var err error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		runtime.LockOSThread() // the thread is dropped, not reused, when the goroutine ends locked
		h, herr := netns.GetFromName(e.hostNS)
		if herr != nil {
			err = herr
			return
		}
		defer h.Close()
		if herr := netns.Set(h); herr != nil {
			err = herr
			return
		}
		err = f()
	}()
	wg.Wait()
	return err
}

func (e *env) add(args *skel.CmdArgs) (types.Result, error) {
	var r types.Result
	err := e.inHost(func() error {
		var err error
		r, err = e.p.add(args)
		return err
	})
	return r, err
}

func (e *env) del(args *skel.CmdArgs) error { return e.inHost(func() error { return e.p.Del(args) }) }
func (e *env) check(args *skel.CmdArgs) error {
	return e.inHost(func() error { return e.p.Check(args) })
}

// links lists the interfaces in a netns other than lo, with MAC and
// IPv4 addresses.
type link struct {
	mac   string
	addrs []string
}

func links(t testing.TB, nsPath string) map[string]link {
	t.Helper()
	out := ip(t, "-n", filepath.Base(nsPath), "-j", "addr", "show")
	var l []struct {
		Ifname   string `json:"ifname"`
		Address  string `json:"address"`
		AddrInfo []struct {
			Family, Local string
			Prefixlen     int
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("ip -j addr: %v: %s", err, out)
	}
	m := map[string]link{}
	for _, x := range l {
		if x.Ifname == "lo" {
			continue
		}
		k := link{mac: x.Address}
		for _, a := range x.AddrInfo {
			if a.Family == "inet" {
				k.addrs = append(k.addrs, fmt.Sprintf("%s/%d", a.Local, a.Prefixlen))
			}
		}
		m[x.Ifname] = k
	}
	return m
}

// leases lists host-local's reserved addresses in a data dir.
func leases(t testing.TB, dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), "last_reserved_ip") && d.Name() != "lock" {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// hostLeases are the leases of this test's extra networks in host-local's
// default data dir.
func (e *env) hostLeases(t testing.TB) []string {
	var out []string
	m, _ := filepath.Glob("/var/lib/cni/networks/h6-" + e.id + "-*")
	for _, d := range m {
		out = append(out, leases(t, d)...)
	}
	return append(out, leases(t, e.ipamDir)...)
}

func (e *env) records(t testing.TB) []string {
	m, _ := filepath.Glob(filepath.Join(e.stateDir, "attachments", "*.json"))
	return m
}

type fakePods struct {
	mu        sync.Mutex
	pods      map[string]*Pod
	node      string
	statuses  map[string]string
	annotated int
	// down: the apiserver does not answer (a transport error).
	down bool
}

func (f *fakePods) set(ns, name string, p *Pod) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pods[ns+"/"+name] = p
}

func (f *fakePods) Get(_ context.Context, ns, name string) (*Pod, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, fmt.Errorf(`Get "https://10.0.0.1:6443/api/v1/namespaces/%s/pods/%s": dial tcp 10.0.0.1:6443: connect: connection refused`, ns, name)
	}
	p, ok := f.pods[ns+"/"+name]
	if !ok {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, name)
	}
	return p, nil
}

func (f *fakePods) Annotate(_ context.Context, ns, name, key, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.statuses == nil {
		f.statuses = map[string]string{}
	}
	f.statuses[ns+"/"+name] = value
	f.annotated++
	return nil
}

func (f *fakePods) status(ns, name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.statuses[ns+"/"+name]
}
