package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/lf-edge/evelet/apicache"
	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/cri"
	"github.com/lf-edge/evelet/internal/layout"
	kubeletshim "github.com/lf-edge/evelet/kubelet-shim"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// apiCacheState is the agent's handle on the running local API cache, for
// status and metrics.
type apiCacheState struct {
	mu        sync.Mutex
	proxy     *apicache.Proxy
	metricsOn sync.Once
	// written: the kubeconfigs to the cache handed to other processes
	// (apiCacheKubeconfig), by name, and the cache they were written for.
	written map[string]*apicache.Proxy
}

// APICacheStatus is the local API cache as `evelet status` shows it.
type APICacheStatus struct {
	Online bool `json:"online"`
	// LastContact is the last answer from the apiserver; shown while
	// offline (online it is now).
	LastContact *time.Time `json:"lastContact,omitempty"`
	Objects     int        `json:"objects"`
	Hits        uint64     `json:"hits"`
	Misses      uint64     `json:"misses"`
	Reconnects  uint64     `json:"reconnects,omitempty"`
	// KubeletThroughCache: the running kubelet talks to the apiserver
	// through the cache. False right after a join: the kubelet bootstraps
	// directly and is restarted onto the cache once it has its client
	// certificate (until then a reboot offline would find nothing cached).
	KubeletThroughCache bool `json:"kubeletThroughCache"`
}

// cachedKubelet runs the kubelet behind the local API cache: the cache
// serves on loopback for as long as the kubelet runs, and the kubelet's
// kubeconfig points at it once the node has a client certificate.
type cachedKubelet struct {
	*kubeletshim.Supervisor
	a    *Agent
	join *intent.Join
	opts *kubeletshim.Options

	mu     sync.Mutex
	proxy  *apicache.Proxy
	direct bool // the running kubelet was started without the cache
	moved  int  // pid of the direct kubelet told to restart onto the cache
}

// withAPICache puts the kubelet of sup (built from opts) behind the cache.
func (a *Agent) withAPICache(j *intent.Join, opts *kubeletshim.Options, sup *kubeletshim.Supervisor) kubeletProc {
	k := &cachedKubelet{Supervisor: sup, a: a, join: j, opts: opts}
	build := sup.Command
	sup.Command = func() *exec.Cmd {
		k.mu.Lock()
		opts.APICacheKubeconfig = k.kubeconfig()
		k.direct = opts.APICacheKubeconfig == ""
		k.mu.Unlock()
		return build()
	}
	return k
}

// kubeconfig writes the kubelet's kubeconfig to the cache and returns its
// path; "" when the kubelet must bootstrap first (it does that directly:
// the cache forwards only a client it knows by its certificate).
func (k *cachedKubelet) kubeconfig() string {
	if k.proxy == nil {
		return ""
	}
	if _, ok, _ := k.a.store.ClientCredentials(time.Now()); !ok {
		return ""
	}
	path := layout.Credentials{Dir: k.a.cfg.Credentials().Dir}.KubeletAPICacheKubeconfig()
	if err := k.proxy.WriteKubeconfig("kubelet", path); err != nil {
		k.a.log.WithError(err).Error("kubelet's kubeconfig to the API cache not written; the kubelet talks to the apiserver directly")
		return ""
	}
	return path
}

// Run serves the cache and runs the kubelet until ctx ends. A cache that
// cannot start leaves the kubelet talking to the apiserver directly.
func (k *cachedKubelet) Run(ctx context.Context) error {
	log := k.a.log.WithField("component", "apicache")
	creds := k.a.cfg.Credentials()
	p, err := apicache.New(apicache.Config{
		Dir:         layout.Credentials{Dir: creds.Dir}.APICache(),
		Clients:     []apicache.Client{{Name: "kubelet", Kubeconfig: creds.KubeconfigPath()}},
		Log:         log,
		OnReconnect: k.nodeEvent,
	})
	if err != nil {
		log.WithError(err).Error("local API cache not started; the kubelet talks to the apiserver directly")
		return k.Supervisor.Run(ctx)
	}
	k.mu.Lock()
	k.proxy = p
	k.mu.Unlock()
	k.a.setAPICache(p)
	defer k.a.setAPICache(nil)
	pctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := p.Run(pctx); err != nil {
			log.WithError(err).Error("local API cache stopped")
		}
	}()
	go func() { defer wg.Done(); k.watch(pctx) }()
	defer func() { stop(); wg.Wait() }()
	return k.Supervisor.Run(ctx)
}

// watch publishes the cache's state and, once a kubelet that bootstrapped
// directly has its client certificate, restarts it so it goes through the
// cache: the first session after a join must be cached too, or a reboot
// offline would find nothing to start.
func (k *cachedKubelet) watch(ctx context.Context) {
	for {
		pid := k.PID()
		k.mu.Lock()
		direct, moved := k.direct, k.moved
		k.mu.Unlock()
		// direct is the running kubelet's, set when it was started: a
		// kubelet told to restart counts as direct until the new one runs.
		k.a.publishAPICache(pid, pid > 0 && !direct)
		if direct && pid > 0 && pid != moved {
			if _, ok, _ := k.a.store.ClientCredentials(time.Now()); ok {
				k.a.log.WithField("pid", pid).Info("kubelet has its client certificate; restarting it to go through the local API cache")
				k.mu.Lock()
				k.moved = pid
				k.mu.Unlock()
				_ = syscall.Kill(pid, syscall.SIGTERM)
			}
		}
		// While the kubelet bootstraps directly, look often: the node
		// registers and becomes Ready moments after the certificate, and
		// a kubelet restarted once pods are starting on it leaves them a
		// created-but-never-started container (a restart in their count).
		every := 2 * time.Second
		if direct && pid != moved {
			every = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// nodeEvent records on the Node that it came back, with the node's own
// identity (the kubelet's client certificate).
func (k *cachedKubelet) nodeEvent(_ apicache.Client, offlineFor time.Duration, rc *apicache.RestConfig) {
	cs, err := kubernetes.NewForConfig(rc.Config)
	if err != nil {
		return
	}
	node := k.join.NodeName
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: node + ".", Namespace: metav1.NamespaceDefault},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: node, UID: types.UID(node), APIVersion: "v1"},
		Reason:         "EveletReconnected",
		Message:        fmt.Sprintf("apiserver reachable again after %s cut off; the kubelet resumes its watches and re-sends its status", offlineFor.Round(time.Second)),
		Source:         corev1.EventSource{Component: "evelet-apicache", Host: node},
		FirstTimestamp: now, LastTimestamp: now, Count: 1, Type: corev1.EventTypeNormal,
		ReportingController: "evelet.lf-edge.org/apicache", ReportingInstance: node,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cs.CoreV1().Events(metav1.NamespaceDefault).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		k.a.log.WithError(err).Warn("reconnect event not recorded on the Node")
	}
}

// cachedPods is the CRI shim's pod source: through the local API cache
// while it serves, so a pod the kubelet starts again offline is checked
// against the spec the cache holds (the shim's own last-read copy is gone
// after a reboot); directly with the node's kubeconfig otherwise.
type cachedPods struct {
	a              *Agent
	direct, cached cri.KubeconfigPods
}

func (a *Agent) criPods() cri.PodSource {
	creds := layout.Credentials{Dir: a.cfg.Credentials().Dir}
	return &cachedPods{a: a, direct: cri.KubeconfigPods{Path: creds.Kubeconfig()}, cached: cri.KubeconfigPods{Path: creds.KubeletAPICacheKubeconfig()}}
}

func (c *cachedPods) Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	if _, running := c.a.apiCacheStats(); running {
		if _, err := os.Stat(c.cached.Path); err == nil {
			return c.cached.Pod(ctx, namespace, name)
		}
	}
	return c.direct.Pod(ctx, namespace, name)
}

func (a *Agent) setAPICache(p *apicache.Proxy) {
	a.apiCache.mu.Lock()
	a.apiCache.proxy = p
	a.apiCache.mu.Unlock()
	if p != nil && a.cfg.Metrics != nil {
		a.apiCache.metricsOn.Do(func() { a.registerAPICacheMetrics(a.cfg.Metrics) })
	}
	if p == nil {
		a.publish(func(s *Status) { s.APICache = nil })
	}
}

// apiCacheKubeconfig gives another of the node's processes that reads the
// cluster with the node's own identity (kube-proxy, the node DNS) a
// kubeconfig to the running cache, so what it read survives a reboot
// offline. It is written once per cache (a cache's port and CA are new at
// every start) to credentials/<name>-apicache.kubeconfig. "" while no cache
// serves or the node has no client certificate yet: the caller then reads
// the apiserver directly. The cache knows the caller by the node's client
// certificate, as it knows the kubelet: same identity upstream, so the two
// share one cache (docs/offline.md).
func (a *Agent) apiCacheKubeconfig(name string) string {
	if _, ok, _ := a.store.ClientCredentials(time.Now()); !ok {
		return ""
	}
	path := filepath.Join(a.cfg.Credentials().Dir, name+"-apicache.kubeconfig")
	a.apiCache.mu.Lock()
	defer a.apiCache.mu.Unlock()
	p := a.apiCache.proxy
	if p == nil {
		return ""
	}
	if a.apiCache.written[name] == p {
		return path
	}
	if err := p.WriteKubeconfig("kubelet", path); err != nil {
		a.log.WithError(err).WithField("client", name).Error("kubeconfig to the API cache not written; reading the apiserver directly")
		return ""
	}
	if a.apiCache.written == nil {
		a.apiCache.written = map[string]*apicache.Proxy{}
	}
	a.apiCache.written[name] = p
	return path
}

// waitAPICacheKubeconfig waits up to max for apiCacheKubeconfig to give a
// path (the cache starts with the kubelet, right after the node's other
// processes) and returns it, or "" after max.
func (a *Agent) waitAPICacheKubeconfig(ctx context.Context, name string, max time.Duration) string {
	var path string
	_ = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, max, true, func(context.Context) (bool, error) {
		path = a.apiCacheKubeconfig(name)
		return path != "", nil
	})
	return path
}

// apiCacheOnline: a cache runs and the apiserver answered it last.
func (a *Agent) apiCacheOnline() bool {
	st, ok := a.apiCacheStats()
	return ok && st.Online
}

func (a *Agent) apiCacheStats() (apicache.Stats, bool) {
	a.apiCache.mu.Lock()
	p := a.apiCache.proxy
	a.apiCache.mu.Unlock()
	if p == nil {
		return apicache.Stats{}, false
	}
	return p.Stats(), true
}

// publishAPICache shows the cache's state and whether kubelet pid goes
// through it; the pid is published with it, so the two never disagree.
func (a *Agent) publishAPICache(pid int, kubeletThrough bool) {
	st, ok := a.apiCacheStats()
	if !ok {
		return
	}
	s := &APICacheStatus{Online: st.Online, Objects: st.Objects, Hits: st.Hits, Misses: st.Misses, Reconnects: st.Reconnects,
		KubeletThroughCache: kubeletThrough}
	if !st.Online && !st.LastContact.IsZero() {
		t := st.LastContact.UTC().Truncate(time.Second)
		s.LastContact = &t
	}
	a.publish(func(x *Status) {
		x.APICache = s
		if pid > 0 {
			x.KubeletPID = pid
		}
	})
}

func (a *Agent) registerAPICacheMetrics(reg prometheus.Registerer) {
	stat := func(f func(apicache.Stats) float64) func() float64 {
		return func() float64 {
			st, ok := a.apiCacheStats()
			if !ok {
				return 0
			}
			return f(st)
		}
	}
	cs := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "evelet_apicache_online", Help: "1 while the apiserver answers the node's local API cache, 0 while the cache serves offline."},
			stat(func(s apicache.Stats) float64 {
				if s.Online {
					return 1
				}
				return 0
			})),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "evelet_apicache_last_contact_timestamp_seconds", Help: "Unix time of the apiserver's last answer to the local API cache."},
			stat(func(s apicache.Stats) float64 {
				if s.LastContact.IsZero() {
					return 0
				}
				return float64(s.LastContact.UnixNano()) / 1e9
			})),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "evelet_apicache_objects", Help: "Objects and tokens held by the local API cache."},
			stat(func(s apicache.Stats) float64 { return float64(s.Objects) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "evelet_apicache_hits_total", Help: "Reads the local API cache answered while offline."},
			stat(func(s apicache.Stats) float64 { return float64(s.Hits) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "evelet_apicache_misses_total", Help: "Requests the local API cache could not answer while offline (writes included)."},
			stat(func(s apicache.Stats) float64 { return float64(s.Misses) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "evelet_apicache_forwarded_total", Help: "Requests the local API cache forwarded to the apiserver."},
			stat(func(s apicache.Stats) float64 { return float64(s.Forwarded) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "evelet_apicache_reconnects_total", Help: "Times the apiserver answered again after the local API cache went offline."},
			stat(func(s apicache.Stats) float64 { return float64(s.Reconnects) })),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			a.log.WithError(err).Warn("API cache metric not registered")
		}
	}
}
