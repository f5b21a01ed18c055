package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/lf-edge/evelet/internal/nodebin"
	"github.com/lf-edge/evelet/tests/devnet"
)

// footprintPods is how many pods the device runs while it is measured
// (issue 19: "with 10 pods").
const footprintPods = 10

// procMem is one process's memory from /proc/<pid>/smaps_rollup, in KiB,
// and the CPU time it used since it started (what a lower GOGC costs).
type procMem struct {
	RSS, PSS, Anon int64
	CPU            time.Duration
}

// footprintRun is what one device ran, by role: agent, kubelet,
// kube-proxy, dns.
type footprintRun map[string]procMem

var footprintRoles = []string{"agent", "kubelet", "kube-proxy", "dns"}

func (r footprintRun) sum() (s procMem) {
	for _, m := range r {
		s.RSS, s.PSS, s.Anon = s.RSS+m.RSS, s.PSS+m.PSS, s.Anon+m.Anon
	}
	return s
}

var footprint struct {
	once          sync.Once
	ok            bool
	evelet, stock footprintRun
	sizes         map[string]int64 // bytes
}

// BenchmarkFootprint is issue 19's footprint, side by side in one run: a
// devnet device with kube-proxy and the node-local DNS on, running 10 pods,
// first as evelet ships (evelet agent, evelet-kubelet, evelet-kube-proxy,
// evelet-dns), then an identical device whose kubelet and kube-proxy are
// the stock ones built from the same k8s.io/kubernetes module with the same
// flags (the agent starts them through two-line stand-ins beside its
// binary). It reports each process's resident memory (RSS, settled), the
// agent/kubelet ratio, the sums, and the binaries' sizes. The devices are
// measured once per run; b.N only repeats the report.
func BenchmarkFootprint(b *testing.B) {
	if env.skipWhy != "" {
		b.Skip(env.skipWhy)
	}
	footprint.once.Do(func() { measureFootprint(b); footprint.ok = true })
	if !footprint.ok {
		b.Fatal("the footprint measurement failed in an earlier round")
	}
	for i := 0; i < b.N; i++ {
	}
	ev, st := footprint.evelet, footprint.stock
	mib := func(kb int64) float64 { return float64(kb) / 1024 }
	for _, r := range footprintRoles {
		b.ReportMetric(mib(ev[r].RSS), r+"-MiB")
	}
	b.ReportMetric(mib(st["kubelet"].RSS), "stock-kubelet-MiB")
	b.ReportMetric(mib(st["kube-proxy"].RSS), "stock-kube-proxy-MiB")
	b.ReportMetric(float64(ev["agent"].RSS)/float64(ev["kubelet"].RSS), "agent/kubelet")
	b.ReportMetric(mib(ev.sum().RSS), "evelet-sum-MiB")
	// A stock node runs no agent: its kubelet, kube-proxy and a node-local
	// DNS (the same CoreDNS plugins: evelet-dns on both devices).
	stockSum := st["kubelet"].RSS + st["kube-proxy"].RSS + st["dns"].RSS
	b.ReportMetric(mib(stockSum), "stock-sum-MiB")
	b.ReportMetric(float64(ev.sum().RSS)/float64(stockSum), "evelet/stock")
	for _, n := range []string{"evelet", "evelet-kubelet", "evelet-kube-proxy", "evelet-dns", "stock-kubelet", "stock-kube-proxy"} {
		b.ReportMetric(float64(footprint.sizes[n])/(1<<20), n+"-bin-MiB")
	}
}

func measureFootprint(b *testing.B) {
	ctx := testCtx(b, 30*time.Minute)
	applyNodeReadBindings(b, ctx)
	stockDir := stockNodeBinaries(b)
	footprint.sizes = map[string]int64{}
	for name, path := range map[string]string{
		"evelet": env.evelet, "stock-kubelet": filepath.Join(stockDir, "kubelet"), "stock-kube-proxy": filepath.Join(stockDir, "kube-proxy"),
	} {
		footprint.sizes[name] = fileSize(b, path)
	}
	for _, r := range nodebin.Roles {
		footprint.sizes[nodebin.Name(r)] = fileSize(b, nodebin.Path(env.evelet, r))
	}
	footprint.evelet = footprintDevice(b, ctx, 15, env.evelet)
	footprint.stock = footprintDevice(b, ctx, 16, filepath.Join(stockDir, "evelet"))
	for _, run := range []struct {
		name string
		r    footprintRun
	}{{"evelet", footprint.evelet}, {"stock kubelet + kube-proxy", footprint.stock}} {
		for _, role := range footprintRoles {
			m := run.r[role]
			b.Logf("%-27s %-10s RSS %6.1f MiB  PSS %6.1f MiB  anon %6.1f MiB  CPU %5.1f s", run.name, role,
				float64(m.RSS)/1024, float64(m.PSS)/1024, float64(m.Anon)/1024, m.CPU.Seconds())
		}
	}
}

// footprintDevice starts devnet device idx with the agent binary evelet,
// runs footprintPods pods on it, and returns its processes' settled memory.
// The device is gone when it returns.
func footprintDevice(b *testing.B, ctx context.Context, idx int, evelet string) footprintRun {
	d := env.devnet.NewDevice(b, idx, devnet.DeviceOptions{ControlPlane: env.cp, Evelet: evelet, Images: env.images,
		AgentArgs: []string{"--kube-proxy"}})
	defer d.Close()
	if err := d.Start(); err != nil {
		b.Fatal(err)
	}
	if _, err := d.WaitReady(ctx, 4*time.Minute); err != nil {
		b.Fatal(err)
	}
	cs := env.cp.Client()
	app := fmt.Sprintf("footprint-%d-%s", idx, strconv.FormatInt(time.Now().UnixNano()%1_000_000, 36))
	dp := busyboxDeployment(app, d.NodeName(), "exec sleep 3600")
	dp.Spec.Replicas = ptr.To[int32](footprintPods)
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, dp, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	defer cs.AppsV1().Deployments("default").Delete(context.Background(), app, metav1.DeleteOptions{})
	waitFor(b, 5*time.Minute, fmt.Sprintf("%d pods of %s Running", footprintPods, app), func() (bool, error) {
		l, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			return false, err
		}
		running := 0
		for _, p := range l.Items {
			if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
				running++
			}
		}
		return running == footprintPods, fmt.Errorf("%d of %d Running", running, len(l.Items))
	})
	pids := map[string]int{}
	waitFor(b, 2*time.Minute, "the device's agent, kubelet, kube-proxy and dns", func() (bool, error) {
		pids = deviceRolePIDs(d)
		return len(pids) == len(footprintRoles), fmt.Errorf("found %v", pids)
	})
	run := footprintRun{}
	for _, role := range footprintRoles {
		settledRSSKB(pids[role])
		m, err := readProcMem(pids[role])
		if err != nil {
			b.Fatalf("%s (pid %d): %v", role, pids[role], err)
		}
		run[role] = m
	}
	return run
}

// deviceRolePIDs finds the agent, kubelet, kube-proxy and dns processes in
// the device's network namespace by their executable: evelet's binaries or
// the stock stand-ins' targets (named kubelet, kube-proxy).
func deviceRolePIDs(d *devnet.Device) map[string]int {
	st, err := os.Stat(filepath.Join("/run/netns", d.NetNS()))
	if err != nil {
		return nil
	}
	ns := fmt.Sprintf("net:[%d]", st.Sys().(*syscall.Stat_t).Ino)
	byExe := map[string]string{
		"evelet": "agent", "evelet-kubelet": "kubelet", "kubelet": "kubelet",
		"evelet-kube-proxy": "kube-proxy", "kube-proxy": "kube-proxy", "evelet-dns": "dns",
	}
	pids := map[string]int{}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range dirs {
		if l, _ := os.Readlink(filepath.Join(dir, "ns", "net")); l != ns {
			continue
		}
		exe, err := os.Readlink(filepath.Join(dir, "exe"))
		if err != nil {
			continue
		}
		role, ok := byExe[filepath.Base(exe)]
		if !ok {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		if args := strings.Split(string(cmd), "\x00"); role == "agent" && (len(args) < 2 || args[1] != "agent") {
			continue // `evelet vmm` and the like
		}
		pid, _ := strconv.Atoi(filepath.Base(dir))
		pids[role] = pid
	}
	return pids
}

func readProcMem(pid int) (procMem, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return procMem{}, err
	}
	var m procMem
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "Rss:":
			m.RSS = v
		case "Pss:":
			m.PSS = v
		case "Anonymous:":
			m.Anon = v
		}
	}
	if m.RSS == 0 {
		return m, fmt.Errorf("no Rss in smaps_rollup")
	}
	m.CPU, err = cpuTime(pid)
	return m, err
}

func fileSize(b *testing.B, path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return st.Size()
}

// stockNodeBinaries builds the stock kubelet and kube-proxy from the
// k8s.io/kubernetes module evelet vendors, with make build's flags, and
// puts them in a directory with a copy of evelet (the agent finds its role
// binaries beside its own executable) and stand-ins named as the role
// binaries: evelet-kubelet and evelet-kube-proxy exec the stock binaries
// with the agent's arguments (less the role word and evelet's policy file
// flag, which the stock kubelet does not know); evelet-dns is evelet's.
func stockNodeBinaries(b *testing.B) string {
	dir := b.TempDir()
	ldflags, err := exec.Command("sh", filepath.Join(env.root, "hack", "ldflags.sh")).Output()
	if err != nil {
		b.Fatalf("hack/ldflags.sh: %v", err)
	}
	for _, c := range []string{"kubelet", "kube-proxy"} {
		cmd := exec.Command("go", "build", "-tags", "providerless", "-trimpath", "-ldflags", strings.TrimSpace(string(ldflags)),
			"-o", filepath.Join(dir, c), "k8s.io/kubernetes/cmd/"+c)
		cmd.Dir = env.root
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("building the stock %s: %v\n%s", c, err, out)
		}
		stub := "#!/bin/sh\n# the stock " + c + " with the agent's arguments\nshift\nfor a do shift; case \"$a\" in --evelet-policy-file=*) ;; *) set -- \"$@\" \"$a\";; esac; done\nexec " +
			filepath.Join(dir, c) + " \"$@\"\n"
		if err := os.WriteFile(filepath.Join(dir, nodebin.Name(c)), []byte(stub), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	// evelet's DNS and the CNI plugins the agent installs from beside it.
	for _, n := range []string{nodebin.Name("dns"), "evelet-cni", "eve-ni"} {
		if err := os.Symlink(filepath.Join(filepath.Dir(env.evelet), n), filepath.Join(dir, n)); err != nil {
			b.Fatal(err)
		}
	}
	raw, err := os.ReadFile(env.evelet)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "evelet"), raw, 0o755); err != nil {
		b.Fatal(err)
	}
	return dir
}

// cpuTime is the user + system time of pid (/proc/<pid>/stat fields 14
// and 15, in clock ticks of USER_HZ, 100 on Linux).
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	return time.Duration(u+s) * time.Second / 100, nil
}
