package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netns"

	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/cni/gc"
	"github.com/lf-edge/evelet/internal/layout"
)

// sysCNI is where hack/install-prereqs.sh puts the reference plugins.
const sysCNI = "/usr/lib/cni"

// TestCNIGCFreesForgottenSandboxes: two sandboxes attached through the
// agent's real conflist (the real evelet-cni, bridge and host-local), then
// a GC that lists only the first, as when the runtime forgot the second
// (and its namespace went): the second's lease and evelet-cni record go,
// the first's interface, lease and record stay. Everything runs in a
// throwaway network namespace.
func TestCNIGCFreesForgottenSandboxes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, bridges, veths")
	}
	if _, err := os.Stat(filepath.Join(sysCNI, "bridge")); err != nil {
		t.Fatalf("reference CNI plugins missing (hack/install-prereqs.sh installs them): %v", err)
	}
	a, dir := cniAgent(t)
	bin := filepath.Dir(a.cfg.Self)
	os.Remove(filepath.Join(bin, "evelet-cni")) // cniAgent's stand-in
	if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, "evelet-cni"), "github.com/lf-edge/evelet/cmd/evelet-cni").CombinedOutput(); err != nil {
		t.Fatalf("building evelet-cni: %v: %s", err, out)
	}
	if err := a.setupCNI(&intent.Join{NodeName: "node1", DeviceUUID: "u"}); err != nil {
		t.Fatal(err)
	}
	leases := filepath.Join(dir, "leases")
	def := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"evelet-default","plugins":[{"type":"bridge","bridge":"evgcbr0","isGateway":true,
	  "ipam":{"type":"host-local","ranges":[[{"subnet":"10.207.0.0/24"}]],"dataDir":%q}}]}`, leases)
	if err := os.WriteFile(filepath.Join(a.cfg.CNI.ConfDir, "10-default.conflist"), []byte(def), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := libcni.ConfListFromFile(filepath.Join(a.cfg.CNI.ConfDir, CNIConflistName))
	if err != nil {
		t.Fatal(err)
	}
	binDirs := []string{a.cfg.CNI.BinDir, sysCNI}
	runtimeCNI := libcni.NewCNIConfigWithCacheDir(binDirs, filepath.Join(dir, "runtime-cache"), nil)
	suffix := make([]byte, 3)
	rand.Read(suffix)
	id := hex.EncodeToString(suffix)

	inThrowawayNetns(t, "evgc-h"+id, func() {
		pods := map[string]string{}
		for _, p := range []string{"keep", "gone"} {
			ns := "evgc-" + p + id
			if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
				t.Errorf("netns %s: %v: %s", ns, err, out)
				return
			}
			t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
			pods[p] = ns
			rt := &libcni.RuntimeConf{ContainerID: "sb-" + p + id, NetNS: "/run/netns/" + ns, IfName: gc.PodIfName}
			if _, err := runtimeCNI.AddNetworkList(context.Background(), l, rt); err != nil {
				t.Errorf("ADD %s: %v", p, err)
				return
			}
		}
		records := func() []string {
			m, _ := filepath.Glob(filepath.Join(layout.State{Dir: a.cfg.StateDir}.CNI().MetaState(), "attachments", "*.json"))
			var ids []string
			for _, f := range m {
				ids = append(ids, strings.Split(filepath.Base(f), "_")[0])
			}
			return ids
		}
		leaseFiles := func() int {
			m, _ := filepath.Glob(filepath.Join(leases, "evelet-default", "10.207.0.*"))
			return len(m)
		}
		if r, n := records(), leaseFiles(); len(r) != 2 || n != 2 {
			t.Errorf("before GC: records %v, %d leases; want 2 and 2", r, n)
			return
		}

		// The runtime forgets "gone", and its namespace goes (as /run does
		// in a reboot that wiped the runtime's state).
		if out, err := exec.Command("ip", "netns", "del", pods["gone"]).CombinedOutput(); err != nil {
			t.Errorf("deleting netns %s: %v: %s", pods["gone"], err, out)
			return
		}
		cache := layout.State{Dir: a.cfg.StateDir}.CNI().GCCache()
		if err := gc.Networks(context.Background(), filepath.Join(a.cfg.CNI.ConfDir, CNIConflistName), binDirs, cache, []string{"sb-keep" + id}); err != nil {
			t.Errorf("GC: %v", err)
			return
		}
		if r := records(); len(r) != 1 || r[0] != "sb-keep"+id {
			t.Errorf("records after GC: %v, want only sb-keep%s", r, id)
		}
		if n := leaseFiles(); n != 1 {
			t.Errorf("%d leases after GC, want 1 (the kept sandbox's)", n)
		}
		if out, _ := exec.Command("ip", "-n", pods["keep"], "-o", "link", "show", gc.PodIfName).CombinedOutput(); !strings.Contains(string(out), gc.PodIfName+"@") {
			t.Errorf("the kept sandbox lost eth0: %s", out)
		}
		// A GC that lists both changes nothing.
		if err := gc.Networks(context.Background(), filepath.Join(a.cfg.CNI.ConfDir, CNIConflistName), binDirs, cache, []string{"sb-keep" + id}); err != nil {
			t.Errorf("second GC: %v", err)
			return
		}
		if r, n := records(), leaseFiles(); len(r) != 1 || n != 1 {
			t.Errorf("after a second GC: records %v, %d leases", r, n)
		}
		if err := runtimeCNI.DelNetworkList(context.Background(), l, &libcni.RuntimeConf{ContainerID: "sb-keep" + id, NetNS: "/run/netns/" + pods["keep"], IfName: gc.PodIfName}); err != nil {
			t.Errorf("DEL keep: %v", err)
		}
	})
}

// inThrowawayNetns runs f on a thread in a new named network namespace, so
// the plugins it starts make their bridges there; the namespace goes after.
// f runs on another goroutine: it reports with t.Errorf and returns.
func inThrowawayNetns(t *testing.T, name string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Never unlocked: the thread, left in the namespace, ends with the goroutine.
		runtime.LockOSThread()
		h, err := netns.NewNamed(name)
		if err != nil {
			t.Errorf("netns %s: %v", name, err)
			return
		}
		defer h.Close()
		defer netns.DeleteNamed(name)
		f()
	}()
	<-done
}
