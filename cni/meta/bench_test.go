package meta

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/lf-edge/evelet/cni/nad"
)

// BenchmarkAddDel measures one sandbox's ADD+DEL with 0, 1 and 4 extra
// networks (bridge + host-local each), through evelet-cni ("meta", in
// process, fake apiserver) and with the same delegates called directly
// through libcni ("direct"): the difference is the meta plugin's overhead.
// "binary" runs the built evelet-cni through libcni as a runtime does
// (default network only: no apiserver here).
func BenchmarkAddDel(b *testing.B) {
	e := newEnv(b)
	nsPath := addNetns(b, "h6-c"+e.id+"bench")
	for _, extra := range []int{0, 1, 4} {
		var nets []string
		for i := 1; i <= extra; i++ {
			nets = append(nets, fmt.Sprintf("br%d", i))
		}
		e.pods.set("pods", "bench", &Pod{UID: "u", NodeName: "node1", Annotations: map[string]string{"k8s.v1.cni.cncf.io/networks": strings.Join(nets, ",")}})
		args := &skel.CmdArgs{ContainerID: "bench" + e.id, Netns: nsPath, IfName: "eth0", Path: cniBinDir,
			Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=pods;K8S_POD_NAME=bench;K8S_POD_UID=u", StdinData: e.conf}
		b.Run(fmt.Sprintf("meta/extra=%d", extra), func(b *testing.B) {
			var add, del time.Duration
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if _, err := e.add(args); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := e.del(args); err != nil {
					b.Fatal(err)
				}
				add, del = add+t1.Sub(t0), del+time.Since(t1)
			}
			report(b, add, del)
		})
		lists := e.directLists(b, nets)
		b.Run(fmt.Sprintf("direct/extra=%d", extra), func(b *testing.B) {
			cn := libcni.NewCNIConfigWithCacheDir([]string{cniBinDir}, b.TempDir(), nil)
			var add, del time.Duration
			for i := 0; i < b.N; i++ {
				err := e.inHost(func() error {
					t0 := time.Now()
					for j, l := range lists {
						if _, err := cn.AddNetworkList(context.Background(), l, &libcni.RuntimeConf{ContainerID: "d" + e.id, NetNS: nsPath, IfName: ifname(j)}); err != nil {
							return err
						}
					}
					t1 := time.Now()
					defer func() { add, del = add+t1.Sub(t0), del+time.Since(t1) }()
					for j := len(lists) - 1; j >= 0; j-- {
						if err := cn.DelNetworkList(context.Background(), lists[j], &libcni.RuntimeConf{ContainerID: "d" + e.id, NetNS: nsPath, IfName: ifname(j)}); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			report(b, add, del)
		})
	}
	bin := buildPlugin(b)
	b.Run("binary/extra=0", func(b *testing.B) {
		// The runtime's view: evelet-cni as the one network, exec'd.
		conf := map[string]any{}
		_ = json.Unmarshal(e.conf, &conf)
		conf["type"] = PluginType
		raw, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": "evelet", "plugins": []any{conf}})
		l, err := libcni.ConfListFromBytes(raw)
		if err != nil {
			b.Fatal(err)
		}
		cn := libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(bin), cniBinDir}, b.TempDir(), nil)
		rt := &libcni.RuntimeConf{ContainerID: "b" + e.id, NetNS: nsPath, IfName: "eth0"}
		var add, del time.Duration
		for i := 0; i < b.N; i++ {
			err := e.inHost(func() error {
				t0 := time.Now()
				if _, err := cn.AddNetworkList(context.Background(), l, rt); err != nil {
					return err
				}
				t1 := time.Now()
				defer func() { add, del = add+t1.Sub(t0), del+time.Since(t1) }()
				return cn.DelNetworkList(context.Background(), l, rt)
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		report(b, add, del)
	})
	if l := e.hostLeases(b); len(l) != 0 {
		b.Fatalf("leases left: %v", l)
	}
}

func report(b *testing.B, add, del time.Duration) {
	b.ReportMetric(float64(add.Microseconds())/1000/float64(b.N), "add-ms/op")
	b.ReportMetric(float64(del.Microseconds())/1000/float64(b.N), "del-ms/op")
}

func ifname(j int) string {
	if j == 0 {
		return "eth0"
	}
	return fmt.Sprintf("net%d", j)
}

// directLists is the default network and the named NADs' conflists.
func (e *env) directLists(b *testing.B, nets []string) []*libcni.NetworkConfigList {
	raw, err := nad.FromConfDir(e.confDir, "h6-default")
	if err != nil {
		b.Fatal(err)
	}
	def, err := nad.Parse(raw)
	if err != nil {
		b.Fatal(err)
	}
	out := []*libcni.NetworkConfigList{def}
	for _, n := range nets {
		r, err := e.nads.Resolve(context.Background(), "pods", "pods", n)
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, r.List)
	}
	return out
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// buildPlugin builds cmd/evelet-cni once into a temp dir (TestMain removes it).
func buildPlugin(t testing.TB) string {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "h6-evelet-cni-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, PluginType)
		out, err := exec.Command("go", "build", "-o", builtBin, "github.com/lf-edge/evelet/cmd/evelet-cni").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtBin != "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}
