package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lf-edge/evelet/tests/controlplane"
	"github.com/lf-edge/evelet/tests/devnet"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// The fleet benchmarks compare what a device costs the control plane when
// it runs evelet with what a stock kubelet costs (tests/e2e/stocknode_test.go),
// in one run against the shared control plane. Every figure comes from the
// apiserver's own metrics:
//
//   - requests: APF's apiserver_flowcontrol_dispatched_requests_total of
//     the flow schemas that hold the nodes' group (system-nodes,
//     system-node-high) and of "probes" (/readyz, /healthz, /livez from
//     anyone: here only the devices ask them, evelet's API cache every
//     3 s; with stock kubelets alone it stays at 0). apiserver_request_total
//     has no user label, so it cannot tell the nodes from the
//     controller-manager, the scheduler and this harness; the flow schemas
//     can, and every client of an evelet device (kubelet, agent, CRI shim,
//     evelet-cni, node DNS, the API cache) uses the node's credentials.
//     A watch counts once, when it starts. The split by verb and resource
//     is logged from apiserver_request_total, all clients included.
//   - open watches: apiserver_longrunning_requests{verb="WATCH"}, with
//     the fleet up minus just before it started.

// deviceFlowSchemas are the APF flow schemas a device's requests land in
// (the apiserver's suggested configuration, v1.35): the system:nodes
// group's two, and the health probes'.
var deviceFlowSchemas = []string{"system-nodes", "system-node-high", "probes"}

// nodeRequests is how many requests of the devices the apiserver has
// dispatched so far.
func nodeRequests(m controlplane.Metrics) float64 {
	var n float64
	for _, fs := range deviceFlowSchemas {
		n += m.Sum("apiserver_flowcontrol_dispatched_requests_total", map[string]string{"flow_schema": fs})
	}
	return n
}

// requestsByVerb are apiserver_request_total by verb and resource, all
// clients.
func requestsByVerb(m controlplane.Metrics) map[string]float64 {
	return m.ByLabels("apiserver_request_total", []string{"verb", "resource", "subresource"}, nil)
}

// openWatches are the apiserver's open watches by resource.
func openWatches(m controlplane.Metrics) map[string]float64 {
	return m.By("apiserver_longrunning_requests", "resource", map[string]string{"verb": "WATCH"})
}

func sumOf(m map[string]float64) float64 {
	var s float64
	for _, v := range m {
		s += v
	}
	return s
}

// perDevice renders (after - before) / n by key, largest first.
func perDevice(before, after map[string]float64, n int) string {
	type kv struct {
		k string
		v float64
	}
	var l []kv
	for k, v := range after {
		if d := (v - before[k]) / float64(n); d > 0.05 || d < -0.05 {
			l = append(l, kv{k, d})
		}
	}
	sort.Slice(l, func(i, j int) bool { return l[i].v > l[j].v })
	var b []string
	for _, e := range l {
		b = append(b, fmt.Sprintf("%s %.1f", e.k, e.v))
	}
	return strings.Join(b, ", ")
}

func scrape(tb testing.TB) (controlplane.Metrics, time.Time) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := env.cp.ScrapeAPIServer(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	return m, time.Now()
}

// fleetDevice is what the fleet benchmark does with an evelet device and a
// stock node alike.
type fleetDevice interface {
	Start() error
	Stop() error
	Close() error
	SetLink(up bool) error
	NodeName() string
	NetNS() string
	WaitLeaseRenewedAfter(ctx context.Context, since time.Time, timeout time.Duration) error
	Leftovers() []string
}

// fleet is N devices of one kind.
type fleet struct {
	kind string // "evelet", "stock"
	devs []fleetDevice
}

// each runs f on every device at once and joins the errors.
func (f *fleet) each(what string, fn func(fleetDevice) error) error {
	var wg sync.WaitGroup
	errs := make([]error, len(f.devs))
	for i, d := range f.devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(d); err != nil {
				errs[i] = fmt.Errorf("%s %s: %w", what, d.NetNS(), err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// waitBack waits until every node renewed its Lease after since and is
// Ready, and returns when the last one was.
func (f *fleet) waitBack(since time.Time, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := f.each("waiting for", func(d fleetDevice) error {
		if err := d.WaitLeaseRenewedAfter(ctx, since, timeout); err != nil {
			return err
		}
		return waitReadyCtx(ctx, d.NodeName())
	})
	return time.Since(since), err
}

// leaseRenewEvery is how often a kubelet renews its node's Lease (the
// default: a quarter of its 40 s duration).
const leaseRenewEvery = 10 * time.Second

// window waits out a measurement window of about d (none for d <= 0),
// counted in the nodes' own Lease renewals: it ends once every node has
// renewed its Lease after each of d/10 s steps (the figures divide by the
// window's measured length). A stalled device or host
// shows as an error at the deadline, not as a quiet window.
func (f *fleet) window(d time.Duration) error {
	if d <= 0 {
		return nil
	}
	deadline := 2*d + time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	for i := time.Duration(0); i < max(d/leaseRenewEvery, 1); i++ {
		since := time.Now()
		if err := f.each("waiting for a Lease renewal of", func(fd fleetDevice) error {
			return fd.WaitLeaseRenewedAfter(ctx, since, deadline)
		}); err != nil {
			return err
		}
	}
	return nil
}

// waitNotReady waits until the cluster marks every node of the fleet not
// Ready (its Ready condition no longer True).
func (f *fleet) waitNotReady(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return f.each("waiting for the cluster to mark not Ready", func(d fleetDevice) error {
		return wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
			n, err := env.cp.Client().CoreV1().Nodes().Get(ctx, d.NodeName(), metav1.GetOptions{})
			return err == nil && !isReady(n), nil
		})
	})
}

func waitReadyCtx(ctx context.Context, node string) error {
	for {
		n, err := env.cp.Client().CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err == nil && isReady(n) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s not Ready: %w (last error %v)", node, ctx.Err(), err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// fleetFigures are one kind's results, per device.
type fleetFigures struct {
	joinAll       time.Duration // start of all -> the last node Ready
	idlePerMin    float64       // requests per minute per idle device
	watches       float64       // open watches per idle device
	watchesBy     string
	reconnect     float64 // requests per device in the window after the link came back
	reconnectIdle float64 // the same minus what the window costs idle
	backAfter     time.Duration
	restart       float64 // requests per device in the window after a restart
	restartIdle   float64
	restartBack   time.Duration
}

// fleetOptions: FLEET_N devices of each kind; FLEET_IDLE the idle window
// (5 min by default: the kubelet re-sends its full NodeStatus every 5 min,
// so a shorter window misses or double-counts it); FLEET_OUTAGE bounds how
// long the links stay cut before the cluster must have marked every node
// not Ready (the outage lasts until it has); FLEET_AFTER the window counted
// after a reconnect or restart. Windows are counted in Lease renewals.
type fleetOptions struct {
	n                   int
	idle, outage, after time.Duration
	warmup              time.Duration
}

func fleetOptionsFromEnv(tb testing.TB) fleetOptions {
	o := fleetOptions{n: 10, idle: 5 * time.Minute, outage: time.Minute, after: time.Minute, warmup: 30 * time.Second}
	if v := os.Getenv("FLEET_N"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 90 {
			tb.Fatalf("FLEET_N=%q: want 1..90", v)
		}
		o.n = n
	}
	for name, p := range map[string]*time.Duration{"FLEET_IDLE": &o.idle, "FLEET_OUTAGE": &o.outage, "FLEET_AFTER": &o.after} {
		if v := os.Getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				tb.Fatalf("%s=%q: want a positive duration", name, v)
			}
			*p = d
		}
	}
	return o
}

// BenchmarkFleet runs N evelet devices, then N stock kubelets, on the
// shared control plane, and measures for each kind: requests per minute
// and open watches per idle device; the requests of all N coming back at
// once after their links were cut for FLEET_OUTAGE (issue 18: a regional
// outage); the requests of all N restarting at once (the agent with its
// kubelet; the stock kubelet). Run it alone with -benchtime 1x (`make
// bench`); see fleetOptions for the knobs.
func BenchmarkFleet(b *testing.B) {
	if env.skipWhy != "" {
		b.Skip(env.skipWhy)
	}
	o := fleetOptionsFromEnv(b)
	if err := inotifyRoom(o.n); err != nil {
		b.Fatal(err)
	}
	stock := stockKubeletBin(b)
	b.Logf("fleet: %d devices of each kind, idle window %v, outage %v, window after a reconnect or restart %v", o.n, o.idle, o.outage, o.after)
	var ev, st fleetFigures
	for i := 0; i < b.N; i++ {
		ev = runFleet(b, o, "evelet", func(k int) fleetDevice {
			return env.devnet.NewDevice(b, k, devnet.DeviceOptions{ControlPlane: env.cp, Evelet: env.evelet})
		})
		st = runFleet(b, o, "stock", func(k int) fleetDevice {
			return newStockNode(b, 100+k, stock)
		})
	}
	for _, r := range []struct {
		unit   string
		ev, st float64
	}{
		{"idle-req/min/dev", ev.idlePerMin, st.idlePerMin},
		{"watches/dev", ev.watches, st.watches},
		{"reconnect-req/dev", ev.reconnect, st.reconnect},
		{"restart-req/dev", ev.restart, st.restart},
		{"join-all-s", ev.joinAll.Seconds(), st.joinAll.Seconds()},
	} {
		b.ReportMetric(r.ev, "evelet-"+r.unit)
		b.ReportMetric(r.st, "stock-"+r.unit)
	}
	// Issue 18: a reconnect of N evelet devices against N plain kubelet
	// restarts.
	if st.restart > 0 {
		b.ReportMetric(ev.reconnect/st.restart, "evelet-reconnect/stock-restart")
	}
	b.ReportMetric(float64(o.n), "devices")
}

// runFleet starts N devices of one kind, measures them idle, cuts and
// restores their links, restarts them, and closes them.
func runFleet(b *testing.B, o fleetOptions, kind string, newDev func(k int) fleetDevice) fleetFigures {
	var fig fleetFigures
	f := &fleet{kind: kind}
	for k := 1; k <= o.n; k++ {
		f.devs = append(f.devs, newDev(k))
	}
	defer func() {
		if b.Failed() {
			// devnet's Cleanup closes them after keeping each agent's log
			// (/tmp/evelet-devnet-failed-*.log); closing here would lose it.
			return
		}
		if err := f.each("closing", func(d fleetDevice) error {
			if err := d.Close(); err != nil {
				return err
			}
			if l := d.Leftovers(); len(l) > 0 {
				return fmt.Errorf("left on the host: %v", l)
			}
			return nil
		}); err != nil {
			b.Error(err)
		}
	}()
	m0, _ := scrape(b)
	w0 := openWatches(m0)

	start := time.Now()
	if err := f.each("starting", fleetDevice.Start); err != nil {
		b.Fatal(err)
	}
	back, err := f.waitBack(start, 10*time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	fig.joinAll = back
	b.Logf("%s: %d nodes Ready %v after their start", kind, o.n, back.Round(time.Millisecond))
	// The join's own bursts (serving CSR, first lists) are over by then:
	// the idle window measures the steady state.
	if err := f.window(o.warmup); err != nil {
		b.Fatal(err)
	}

	m1, t1 := scrape(b)
	if err := f.window(o.idle); err != nil {
		b.Fatal(err)
	}
	m2, t2 := scrape(b)
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		b.Logf("%s idle: host load average at the window's end: %s", kind, strings.TrimSpace(string(la)))
	}
	idleReq := nodeRequests(m2) - nodeRequests(m1)
	fig.idlePerMin = idleReq / t2.Sub(t1).Minutes() / float64(o.n)
	w2 := openWatches(m2)
	fig.watches = (sumOf(w2) - sumOf(w0)) / float64(o.n)
	fig.watchesBy = perDevice(w0, w2, o.n)
	b.Logf("%s idle: %.1f requests/min per device (%.0f in %v for %d devices); %.1f open watches per device (%s); all clients, per device in the window, by flow schema: %s; by verb and resource: %s",
		kind, fig.idlePerMin, idleReq, t2.Sub(t1).Round(time.Second), o.n, fig.watches, fig.watchesBy,
		perDevice(byFlowSchema(m1), byFlowSchema(m2), o.n), perDevice(requestsByVerb(m1), requestsByVerb(m2), o.n))

	// A regional outage: every link cut at once, then restored at once.
	if err := f.each("cutting the link of", func(d fleetDevice) error { return d.SetLink(false) }); err != nil {
		b.Fatal(err)
	}
	// The outage holds until the cluster has seen it: every node marked
	// not Ready by the node lifecycle controller.
	if err := f.waitNotReady(o.outage + 2*time.Minute); err != nil {
		b.Fatal(err)
	}
	fig.reconnect, fig.reconnectIdle, fig.backAfter = measureComeback(b, o, f, fig.idlePerMin, "reconnect", func(d fleetDevice) error { return d.SetLink(true) })

	// All of them restarting at once: Stop (SIGTERM: the agent stops its
	// kubelet; the stock kubelet exits; containerd stops) then Start.
	if err := f.each("stopping", fleetDevice.Stop); err != nil {
		b.Fatal(err)
	}
	fig.restart, fig.restartIdle, fig.restartBack = measureComeback(b, o, f, fig.idlePerMin, "restart", fleetDevice.Start)
	return fig
}

// measureComeback counts the nodes' requests in the window of o.after from
// the moment fn runs on every device (links restored, processes started):
// per device, and per device beyond what the same window costs idle.
func measureComeback(b *testing.B, o fleetOptions, f *fleet, idlePerMin float64, what string, fn func(fleetDevice) error) (perDev, beyondIdle float64, back time.Duration) {
	m0, _ := scrape(b)
	since := time.Now()
	if err := f.each(what, fn); err != nil {
		b.Fatal(err)
	}
	back, err := f.waitBack(since, 10*time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	if err := f.window(o.after - time.Since(since)); err != nil {
		b.Fatal(err)
	}
	m1, t1 := scrape(b)
	window := t1.Sub(since)
	perDev = (nodeRequests(m1) - nodeRequests(m0)) / float64(len(f.devs))
	beyondIdle = perDev - idlePerMin*window.Minutes()
	b.Logf("%s %s: all %d nodes Ready with a renewed Lease %v after; %.1f requests per device in %v (%.1f beyond idle); all clients, per device, by flow schema: %s; by verb and resource: %s",
		f.kind, what, len(f.devs), back.Round(time.Millisecond), perDev, window.Round(time.Second), beyondIdle,
		perDevice(byFlowSchema(m0), byFlowSchema(m1), len(f.devs)), perDevice(requestsByVerb(m0), requestsByVerb(m1), len(f.devs)))
	return perDev, beyondIdle, back
}

func byFlowSchema(m controlplane.Metrics) map[string]float64 {
	return m.By("apiserver_flowcontrol_dispatched_requests_total", "flow_schema", nil)
}

// BenchmarkJoinVsStock measures start -> Node Ready of an evelet device
// (agent start: EVE channel, token discovery, TLS bootstrapping, kubelet)
// and of a stock kubelet bootstrapping with a kubeadm-style bootstrap
// kubeconfig, both on devnet devices against the shared control plane,
// the two alternating which goes first. Start is when the agent (or the
// kubelet) process starts, containerd already up; Ready is when a watch
// opened before the start first sees the condition.
func BenchmarkJoinVsStock(b *testing.B) {
	if env.skipWhy != "" {
		b.Skip(env.skipWhy)
	}
	stock := stockKubeletBin(b)
	times := map[string][]time.Duration{}
	for i := 0; i < b.N; i++ {
		kinds := []string{"evelet", "stock"}
		if i%2 == 1 {
			kinds[0], kinds[1] = kinds[1], kinds[0]
		}
		for _, kind := range kinds {
			var d interface {
				fleetDevice
				AgentStartedAt() time.Time
			}
			if kind == "evelet" {
				d = env.devnet.NewDevice(b, 150, devnet.DeviceOptions{ControlPlane: env.cp, Evelet: env.evelet})
			} else {
				d = newStockNode(b, 151, stock)
			}
			j, err := timeJoin(d.NodeName(), d.Start, d.AgentStartedAt)
			if err != nil {
				b.Fatalf("%s: %v", kind, err)
			}
			times[kind] = append(times[kind], j)
			if err := d.Close(); err != nil {
				b.Fatal(err)
			}
		}
	}
	ev, st := median(times["evelet"]), median(times["stock"])
	b.Logf("join times: evelet %v, stock kubelet %v", times["evelet"], times["stock"])
	b.ReportMetric(ev.Seconds(), "evelet-join-s")
	b.ReportMetric(st.Seconds(), "stock-join-s")
	b.ReportMetric(ev.Seconds()/st.Seconds(), "join-ratio")
}

// timeJoin starts a device and returns how long after its agent (or
// kubelet) process started its node was first seen Ready.
func timeJoin(node string, start func() error, startedAt func() time.Time) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rw, err := watchNodeReady(ctx, node)
	if err != nil {
		return 0, err
	}
	if err := start(); err != nil {
		return 0, err
	}
	at, err := rw.wait()
	if err != nil {
		return 0, err
	}
	return at.Sub(startedAt()), nil
}

// inotifyPerDevice is how many inotify instances one device holds: its
// kubelet 4 (cAdvisor, its config and certificate watchers), its
// containerd 1, one to spare (measured with 20 evelet devices).
const inotifyPerDevice = 6

// inotifyRoom refuses a fleet the host's inotify limit cannot hold. Every
// device runs as root, so they share root's fs.inotify.max_user_instances
// (128 by default); past it a kubelet fails at cAdvisor's start with
// "inotify_init: too many open files" and never registers its Node.
func inotifyRoom(n int) error {
	raw, err := os.ReadFile("/proc/sys/fs/inotify/max_user_instances")
	if err != nil {
		return err
	}
	limit, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		return fmt.Errorf("fs.inotify.max_user_instances: %w", err)
	}
	used := 0
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && l == "anon_inode:inotify" {
			used++
		}
	}
	if need := used + n*inotifyPerDevice; need > limit {
		return fmt.Errorf("%d devices need about %d inotify instances, %d are in use, fs.inotify.max_user_instances is %d: lower FLEET_N or raise the limit (sysctl fs.inotify.max_user_instances=%d)",
			n, n*inotifyPerDevice, used, limit, need+64)
	}
	return nil
}
