package meta

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/lf-edge/evelet/cni/annotation"
)

func names(m map[string]link) []string {
	var n []string
	for k := range m {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// requireClean asserts that nothing of a sandbox is left: no interface in
// its netns, no IPAM lease, no attachment record, no libcni result.
func (e *env) requireClean(t *testing.T, args *skel.CmdArgs) {
	t.Helper()
	if l := links(t, args.Netns); len(l) != 0 {
		t.Errorf("interfaces left in the pod netns: %v", names(l))
	}
	if l := e.hostLeases(t); len(l) != 0 {
		t.Errorf("IPAM leases left: %v", l)
	}
	if r := e.records(t); len(r) != 0 {
		t.Errorf("attachment records left: %v", r)
	}
	if m, _ := filepath.Glob(filepath.Join(e.stateDir, "results", "*"+args.ContainerID+"*")); len(m) != 0 {
		t.Errorf("libcni results left: %v", m)
	}
}

func TestAddCheckDel(t *testing.T) {
	e := newEnv(t)
	args := e.sandbox(t, "two", `[{"name":"br1"},{"name":"mv","mac":"02:00:00:00:06:02","ips":["10.206.20.5/24"]}]`)
	res, err := e.add(args)
	if err != nil {
		t.Fatal(err)
	}
	// The runtime gets the default network's result.
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.IPs) != 1 || !strings.HasPrefix(r.IPs[0].Address.String(), "10.206.0.") {
		t.Fatalf("result is not the default network's: %+v", r)
	}
	l := links(t, args.Netns)
	if got := names(l); !reflect.DeepEqual(got, []string{"eth0", "net1", "net2"}) {
		t.Fatalf("interfaces %v, want eth0 net1 net2", got)
	}
	if l["net2"].mac != "02:00:00:00:06:02" || !reflect.DeepEqual(l["net2"].addrs, []string{"10.206.20.5/24"}) {
		t.Fatalf("net2 = %+v, want the requested MAC and IP", l["net2"])
	}
	if len(l["net1"].addrs) != 1 || !strings.HasPrefix(l["net1"].addrs[0], "10.206.11.") {
		t.Fatalf("net1 = %+v", l["net1"])
	}
	var st []annotation.NetworkStatus
	if err := json.Unmarshal([]byte(e.pods.status("pods", "two")), &st); err != nil {
		t.Fatalf("network-status: %v", err)
	}
	if len(st) != 3 || st[0].Name != "h6-default" || !st[0].Default || st[0].Interface != "eth0" || st[0].MAC != l["eth0"].mac ||
		st[1].Name != "pods/br1" || st[1].Interface != "net1" || st[1].Default || len(st[1].IPs) != 1 || st[1].IPs[0]+"/24" != l["net1"].addrs[0] ||
		st[2].Name != "pods/mv" || st[2].MAC != "02:00:00:00:06:02" || !reflect.DeepEqual(st[2].IPs, []string{"10.206.20.5"}) {
		t.Fatalf("network-status wrong: %+v", st)
	}
	if err := e.check(args); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	// CHECK sees a removed interface.
	ip(t, "-n", filepath.Base(args.Netns), "link", "del", "net1")
	if err := e.check(args); err == nil || !strings.Contains(err.Error(), "pods/br1") {
		t.Fatalf("CHECK after losing net1: %v", err)
	}
	if err := e.del(args); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	e.requireClean(t, args)
	// DEL is idempotent.
	if err := e.del(args); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
}

// TestDelAfterDefaultNetworkRemoved (issue 17): when the node leaves, the
// agent removes the default network's conflist it wrote (podcidr mode)
// while the runtime may still hold sandboxes it DELs again later (and
// before removing them). A DEL with nothing recorded and no default
// network left succeeds: there is nothing to undo, and failing would
// leave the sandbox unremovable.
func TestDelAfterDefaultNetworkRemoved(t *testing.T) {
	e := newEnv(t)
	args := e.sandbox(t, "gone", "")
	if _, err := e.add(args); err != nil {
		t.Fatal(err)
	}
	if err := e.del(args); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if err := os.Remove(filepath.Join(e.confDir, "10-h6-default.conflist")); err != nil {
		t.Fatal(err)
	}
	if err := e.del(args); err != nil {
		t.Errorf("DEL again, the default network's conflist removed: %v", err)
	}
	never := e.sandbox(t, "never", "")
	if err := e.del(never); err != nil {
		t.Errorf("DEL of a sandbox never added, the default network's conflist removed: %v", err)
	}
	e.requireClean(t, args)
}

func TestCommaFormAndDefaultOnly(t *testing.T) {
	e := newEnv(t)
	plain := e.sandbox(t, "plain", "")
	if _, err := e.add(plain); err != nil {
		t.Fatal(err)
	}
	if got := names(links(t, plain.Netns)); !reflect.DeepEqual(got, []string{"eth0"}) {
		t.Fatalf("pod without networks: %v", got)
	}
	if !strings.Contains(e.pods.status("pods", "plain"), `"default": true`) {
		t.Fatalf("network-status of a default-only pod: %s", e.pods.status("pods", "plain"))
	}
	comma := e.sandbox(t, "comma", "br1@data0, pods/br2")
	if _, err := e.add(comma); err != nil {
		t.Fatal(err)
	}
	if got := names(links(t, comma.Netns)); !reflect.DeepEqual(got, []string{"data0", "eth0", "net2"}) {
		t.Fatalf("comma form: %v", got)
	}
	for _, a := range []*skel.CmdArgs{plain, comma} {
		if err := e.del(a); err != nil {
			t.Fatal(err)
		}
	}
	e.requireClean(t, plain)
	e.requireClean(t, comma)
}

func TestDelWithoutAPIServer(t *testing.T) {
	e := newEnv(t)
	args := e.sandbox(t, "cached", `[{"name":"br1"},{"name":"br2"},{"name":"mv","ips":["10.206.20.7/24"]}]`)
	if _, err := e.add(args); err != nil {
		t.Fatal(err)
	}
	if got := names(links(t, args.Netns)); len(got) != 4 {
		t.Fatalf("interfaces %v", got)
	}
	// The apiserver is unreachable and the pod is gone from it: DEL works
	// from the attachment record alone.
	e.apiDown = true
	e.pods.mu.Lock()
	delete(e.pods.pods, "pods/cached")
	e.pods.mu.Unlock()
	if err := e.del(args); err != nil {
		t.Fatalf("DEL from the cache: %v", err)
	}
	e.requireClean(t, args)
}

func TestHalfwayAddUndone(t *testing.T) {
	e := newEnv(t)
	// br1 and br2 attach, then "broken"'s macvlan master does not exist.
	args := e.sandbox(t, "half", "br1,br2,broken@bad0")
	_, err := e.add(args)
	if err == nil {
		t.Fatal("ADD succeeded with a broken network")
	}
	t.Log(err)
	for _, w := range []string{"pod pods/half: network 3 (pods/broken, interface bad0)", "h6_no_such_sysctl"} {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("error %q does not name %q", err, w)
		}
	}
	e.requireClean(t, args)
	if s := e.pods.status("pods", "half"); s != "" {
		t.Fatalf("network-status written for a failed ADD: %s", s)
	}
}

// A sandbox is always deletable: a delegate whose DEL fails every time
// (bandwidth refusing its own config) must not keep the record, the
// other plugins' interfaces and leases, or the default network for ever.
func TestDelegateDelFailingFreesTheRest(t *testing.T) {
	e := newEnv(t)
	args := e.sandbox(t, "undel", "br1,undeletable")
	_, err := e.add(args)
	if err == nil {
		t.Fatal("ADD succeeded with a bandwidth plugin that refuses its config")
	}
	t.Log(err)
	e.requireClean(t, args)
	// The runtime's DEL after the failed ADD (and any retry) succeeds.
	if err := e.del(args); err != nil {
		t.Fatalf("DEL after the failed ADD: %v", err)
	}
	e.requireClean(t, args)
}

// A re-attach during an apiserver outage applies the owner's allow-lists
// in force now, not those of the pod's last ADD.
func TestAddDuringOutageUsesTodaysRules(t *testing.T) {
	e := newEnv(t)
	args := e.sandbox(t, "rules", `[{"name":"br1"},{"name":"mv","ips":["10.206.20.11/24"]}]`)
	if _, err := e.add(args); err != nil {
		t.Fatal(err)
	}
	if err := e.del(args); err != nil {
		t.Fatal(err)
	}
	// The owner no longer allows macvlan; the sandbox is recreated while
	// the apiserver is down.
	var conf map[string]any
	if err := json.Unmarshal(e.conf, &conf); err != nil {
		t.Fatal(err)
	}
	conf["rules"] = map[string]any{"pluginTypes": []string{"bridge", "tuning"}, "ipamTypes": []string{"host-local", "static"}}
	e.conf, _ = json.Marshal(conf)
	again := *args
	again.ContainerID += "b"
	again.StdinData = e.conf
	again.Netns = addNetns(t, e.prefix+"-c"+e.id+"rulb")
	e.pods.mu.Lock()
	e.pods.down = true
	e.pods.mu.Unlock()
	_, err := e.add(&again)
	if err == nil || !strings.Contains(err.Error(), `re-attaching pods/mv (interface net2) during an apiserver outage`) || !strings.Contains(err.Error(), `plugin type "macvlan" is not allowed`) {
		t.Fatalf("ADD during the outage after the owner took macvlan away: %v", err)
	}
	e.requireClean(t, &again)
}

func TestRefusalsAttachNothing(t *testing.T) {
	e := newEnv(t)
	for _, c := range []struct{ name, networks, want string }{
		{"unknown", "br1,nope", "network 2 (pods/nope, interface net2): NetworkAttachmentDefinition pods/nope not found"},
		{"malformed", `[{"name":"br1"`, "k8s.v1.cni.cncf.io/networks: not a valid JSON list"},
		{"dupif", "br1@x,br2@x", `interface "x" is already used by network 1`},
		{"notjson", "notjson", "NetworkAttachmentDefinition pods/notjson: CNI config is not valid JSON"},
		{"othernamespace", "kube-system/br1", `may use only NADs of its own namespace`},
		{"nomaccap", `[{"name":"br1","mac":"02:00:00:00:00:09"}]`, `no plugin of it supports "mac"`},
		{"twodefroutes", `[{"name":"br1","default-route":["10.206.11.1"]},{"name":"br2","default-route":[]}]`, `both set "default-route"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := e.sandbox(t, c.name, c.networks)
			_, err := e.add(args)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
			if !strings.Contains(err.Error(), "pods/"+c.name) {
				t.Fatalf("error %q does not name the pod", err)
			}
			e.requireClean(t, args)
		})
	}
}

func TestCredentialMissing(t *testing.T) {
	e := newEnv(t)
	e.p.Clients = func(*Conf) (*Clients, error) { return &Clients{Pods: e.pods}, nil } // node credential only
	plain := e.sandbox(t, "plain", "")
	if _, err := e.add(plain); err != nil {
		t.Fatalf("a pod without networks needs no network credential: %v", err)
	}
	multi := e.sandbox(t, "multi", "br1")
	_, err := e.add(multi)
	if err == nil || !strings.Contains(err.Error(), "asks for networks (pods/br1) but this node has no evelet-network credential") {
		t.Fatalf("error %v", err)
	}
	if err := e.del(plain); err != nil {
		t.Fatal(err)
	}
	e.requireClean(t, multi)
	e.requireClean(t, plain)
}

func TestForeignPodNotAnnotated(t *testing.T) {
	e := newEnv(t)
	args := e.sandbox(t, "foreign", "br1")
	p, _ := e.pods.Get(nil, "pods", "foreign")
	p.NodeName = "node2"
	_, err := e.add(args)
	if err == nil || !strings.Contains(err.Error(), `bound to node "node2", not to this node "node1"`) {
		t.Fatalf("error %v", err)
	}
	if e.pods.status("pods", "foreign") != "" {
		t.Fatal("a pod of another node was annotated")
	}
	e.requireClean(t, args)
}

func TestGC(t *testing.T) {
	e := newEnv(t)
	keep := e.sandbox(t, "keep", "br1")
	gone := e.sandbox(t, "gone", "br1,br2")
	for _, a := range []*skel.CmdArgs{keep, gone} {
		if _, err := e.add(a); err != nil {
			t.Fatal(err)
		}
	}
	stdin := e.gc(t, keep) // a 1.1.0 configuration, for STATUS below too
	if got := names(links(t, keep.Netns)); !reflect.DeepEqual(got, []string{"eth0", "net1"}) {
		t.Fatalf("GC touched a valid sandbox: %v", got)
	}
	// The collected sandbox's addresses and record are gone (its veths go
	// with its netns, which the runtime deletes).
	if r := e.records(t); len(r) != 1 || !strings.Contains(r[0], keep.ContainerID) {
		t.Fatalf("records after GC: %v", r)
	}
	if l := e.hostLeases(t); len(l) != 2 {
		t.Fatalf("leases after GC: %v, want keep's two", l)
	}
	if err := e.inHost(func() error { return e.p.Status(&skel.CmdArgs{Path: cniBinDir, StdinData: stdin}) }); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	if err := e.del(keep); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(gone.Netns)
	e.requireClean(t, keep)
}

// TestAddDuringOutage: a pod whose sandbox is recreated while the apiserver
// does not answer gets the networks of its last sandbox (same MAC and
// static IP), and network-status is left as the last ADD wrote it. A pod
// the apiserver says is gone, or one never attached, is not attached from
// a plan. Plans of pods long gone from the node are pruned.
func TestAddDuringOutage(t *testing.T) {
	e := newEnv(t)
	args := e.sandbox(t, "outage", `[{"name":"br1"},{"name":"mv","mac":"02:00:00:00:06:07","ips":["10.206.20.9/24"]}]`)
	if _, err := e.add(args); err != nil {
		t.Fatal(err)
	}
	status := e.pods.status("pods", "outage")
	if err := e.del(args); err != nil {
		t.Fatal(err)
	}
	e.requireClean(t, args)

	// The sandbox is recreated (new netns, new ID, same pod) with the
	// apiserver down.
	again := *args
	again.ContainerID += "b"
	again.Netns = addNetns(t, e.prefix+"-c"+e.id+"outb")
	e.pods.mu.Lock()
	e.pods.down = true
	annotated := e.pods.annotated
	e.pods.mu.Unlock()
	if _, err := e.add(&again); err != nil {
		t.Fatalf("ADD with the apiserver down: %v", err)
	}
	l := links(t, again.Netns)
	if got := names(l); !reflect.DeepEqual(got, []string{"eth0", "net1", "net2"}) {
		t.Fatalf("interfaces %v, want eth0 net1 net2 as before the outage", got)
	}
	if l["net2"].mac != "02:00:00:00:06:07" || !reflect.DeepEqual(l["net2"].addrs, []string{"10.206.20.9/24"}) {
		t.Errorf("net2 = %+v, want the MAC and IP the pod asked for", l["net2"])
	}
	if e.pods.annotated != annotated || e.pods.status("pods", "outage") != status {
		t.Errorf("network-status written during the outage")
	}
	if err := e.del(&again); err != nil {
		t.Fatal(err)
	}
	e.requireClean(t, &again)

	// An apiserver that answers is believed: the pod is gone.
	e.pods.mu.Lock()
	e.pods.down = false
	delete(e.pods.pods, "pods/outage")
	e.pods.mu.Unlock()
	third := again
	third.ContainerID += "c"
	if _, err := e.add(&third); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("ADD of a pod the apiserver says is gone: %v, want not found", err)
	}
	// Never attached before: nothing to fall back on.
	fresh := e.sandbox(t, "fresh", `[{"name":"br1"}]`)
	e.pods.mu.Lock()
	e.pods.down = true
	e.pods.mu.Unlock()
	if _, err := e.add(fresh); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("ADD of a pod never attached, apiserver down: %v, want the apiserver's error", err)
	}
	e.requireClean(t, fresh)

	// A plan whose pod has not been attached for over a day goes at the
	// next GC; a live pod's plan stays.
	c, err := ParseConf(e.conf)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := c.planPath("uid-outage")
	if _, err := os.Stat(old); err != nil {
		t.Fatalf("plan of the pod: %v", err)
	}
	long := time.Now().Add(-planKeep - time.Hour)
	os.Chtimes(old, long, long)
	e.pods.mu.Lock()
	e.pods.down = false
	e.pods.mu.Unlock()
	if _, err := e.add(fresh); err != nil {
		t.Fatal(err)
	}
	live, _ := c.planPath("uid-fresh")
	os.Chtimes(live, long, long)
	if _, err := os.Stat(old); err != nil {
		t.Errorf("ADD pruned plans (GC's job): %v", err)
	}
	e.gc(t, fresh)
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("plan of a pod gone for over a day kept: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("plan of a pod still attached pruned: %v", err)
	}
	if err := e.del(fresh); err != nil {
		t.Fatal(err)
	}
}

// gc sends CNI GC (1.1.0) with valid's sandboxes as the valid attachments
// and returns the configuration it sent.
func (e *env) gc(t *testing.T, valid ...*skel.CmdArgs) []byte {
	t.Helper()
	var conf map[string]any
	_ = json.Unmarshal(e.conf, &conf)
	conf["cniVersion"] = "1.1.0"
	var va []map[string]string
	for _, a := range valid {
		va = append(va, map[string]string{"containerID": a.ContainerID, "ifname": a.IfName})
	}
	conf["cni.dev/valid-attachments"] = va
	stdin, _ := json.Marshal(conf)
	if err := e.inHost(func() error { return e.p.GC(&skel.CmdArgs{Path: cniBinDir, StdinData: stdin}) }); err != nil {
		t.Fatalf("GC: %v", err)
	}
	return stdin
}
