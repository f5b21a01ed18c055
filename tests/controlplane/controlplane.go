// Package controlplane runs a real Kubernetes control plane on loopback for
// evelet's end-to-end tests and its demo: etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler as child processes, with a PKI
// made here and the objects `kubeadm init` creates for nodes to join with a
// bootstrap token (kube-public/cluster-info, the RBAC bindings for TLS
// bootstrapping and CSR auto-approval). A device under test joins it the way
// it joins a kubeadm cluster: apiserver URL, bootstrap token, CA pin.
//
// Prepare makes the PKI, picks the ports and writes the kubeconfigs without
// starting anything, so that a test can hand the URL and CA pin to a device
// before the apiserver exists; Run starts the processes. Start does both.
//
// The binaries come from hack/build-kube.sh (Options.BinDir, or the script is
// run). Everything lives under Options.Dir: pki/, etcd/, logs/<name>.log,
// pids/<name>.pid, the kubeconfigs. Stop ends every process by pid; a crashed
// test's leftovers are found through the pid files (KillLeftovers, which
// Prepare runs on its directory).
package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/kubernetes/cmd/kubeadm/app/util/pubkeypin"
)

// Component names: the keys of Processes, the names of the log and pid files.
const (
	Etcd              = "etcd"
	APIServer         = "kube-apiserver"
	ControllerManager = "kube-controller-manager"
	Scheduler         = "kube-scheduler"
)

// Options configure a control plane. Only Dir is required.
type Options struct {
	// Dir holds all state: pki/, etcd/ (data), logs/, pids/, the
	// kubeconfigs. Only one control plane may use a Dir at a time. What an
	// earlier run left there is reused: the etcd data, and the CAs and the
	// service-account key in Dir/pki, so the CA pin stays the same.
	Dir string
	// BinDir holds etcd, kube-apiserver, kube-controller-manager,
	// kube-scheduler and kubectl. Empty: run hack/build-kube.sh of the
	// evelet module and use the directory it prints.
	BinDir string
	// APIServerPort is the apiserver's secure port (0: a free one).
	APIServerPort int
	// EtcdPort is etcd's client port (0: a free one); the peer port is
	// always a free one.
	EtcdPort int
	// ServiceCIDR is the service cluster IP range (default 10.96.0.0/16).
	ServiceCIDR string
	// ClusterCIDR is the pod network, given to the controller-manager for
	// information; node IPAM stays off (--allocate-node-cidrs=false).
	ClusterCIDR string
	// AdvertiseAddress is the apiserver's advertised address and the server
	// in kube-public/cluster-info (default 127.0.0.1).
	AdvertiseAddress string
	// BindAddress is where the apiserver listens (default: AdvertiseAddress
	// when that is a loopback address, else 0.0.0.0).
	BindAddress string
	// ExtraSANs are added to the apiserver's serving certificate (IP
	// addresses or DNS names).
	ExtraSANs []string
	// NodeMonitorGracePeriod is the controller-manager's
	// --node-monitor-grace-period (0: its default, 50 s). Shorter makes
	// NotReady tests faster.
	NodeMonitorGracePeriod time.Duration
	// StartTimeout bounds the wait for each component to become healthy
	// (default 2 min).
	StartTimeout time.Duration
	// ExtraArgs are appended to a component's command line, by component
	// name (Etcd, APIServer, ControllerManager, Scheduler).
	ExtraArgs map[string][]string
	// Log, if set, receives every process's output, each line prefixed with
	// the component's name (the files in Dir/logs always have it).
	Log io.Writer
}

// ControlPlane is a prepared, possibly running, control plane. Its getters
// may be called from any goroutine; Run, StartAPIServer, StopAPIServer and
// Stop must not run concurrently with each other.
type ControlPlane struct {
	o         Options
	dir       string
	binDir    string
	advertise net.IP
	bindAddr  string
	timeout   time.Duration
	stopGrace time.Duration // SIGTERM to SIGKILL

	url          string // what this host dials: https://127.0.0.1:<port>
	advertiseURL string // what cluster-info tells nodes
	apiPort      int
	etcdPort     int
	etcdPeerPort int
	cmPort       int
	schedPort    int

	ca                        *authority
	adminCertPEM, adminKeyPEM []byte
	restConfig                *rest.Config
	client                    kubernetes.Interface
	probe                     *http.Client // admin credentials, for /readyz
	insecure                  *http.Client // for the components' /healthz

	mu       sync.Mutex
	procs    map[string]*proc
	timings  map[string]time.Duration
	approver *servingApprover // kubelet-serving CSRs (servingcsr.go)
}

// Start prepares and runs a control plane; see Prepare and Run.
func Start(ctx context.Context, o Options) (*ControlPlane, error) {
	c, err := Prepare(o)
	if err != nil {
		return nil, err
	}
	if err := c.Run(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Prepare kills leftovers of an earlier run in o.Dir, finds (or builds) the
// binaries, picks the ports, and writes the PKI and the kubeconfigs. It
// starts no process: URL, CACertPEM, CAPin and AdminKubeconfig are valid
// from here on, the apiserver answers after Run.
func Prepare(o Options) (*ControlPlane, error) {
	dir, err := canonicalDir(o.Dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	if dir, err = canonicalDir(dir); err != nil {
		return nil, err
	}
	if err := KillLeftovers(dir); err != nil {
		return nil, err
	}
	if o.ServiceCIDR == "" {
		o.ServiceCIDR = "10.96.0.0/16"
	}
	if o.AdvertiseAddress == "" {
		o.AdvertiseAddress = "127.0.0.1"
	}
	c := &ControlPlane{
		o:         o,
		dir:       dir,
		timeout:   o.StartTimeout,
		stopGrace: stopGrace,
		procs:     map[string]*proc{},
		timings:   map[string]time.Duration{},
	}
	if c.timeout <= 0 {
		c.timeout = 2 * time.Minute
	}
	if c.advertise = net.ParseIP(o.AdvertiseAddress); c.advertise == nil || c.advertise.IsUnspecified() {
		return nil, fmt.Errorf("controlplane: AdvertiseAddress %q is not a usable IP address", o.AdvertiseAddress)
	}
	c.bindAddr = o.BindAddress
	if c.bindAddr == "" {
		c.bindAddr = "0.0.0.0"
		if c.advertise.IsLoopback() {
			c.bindAddr = c.advertise.String()
		}
	}
	bindIP := net.ParseIP(c.bindAddr)
	if bindIP == nil {
		return nil, fmt.Errorf("controlplane: BindAddress %q is not an IP address", c.bindAddr)
	}
	if c.binDir, err = EnsureBinaries(o.BinDir); err != nil {
		return nil, err
	}

	ports, err := freePorts([]portWish{
		{c.bindAddr, o.APIServerPort}, {"127.0.0.1", o.EtcdPort}, {"127.0.0.1", 0},
		{"127.0.0.1", 0}, {"127.0.0.1", 0},
	})
	if err != nil {
		return nil, err
	}
	c.apiPort, c.etcdPort, c.etcdPeerPort, c.cmPort, c.schedPort = ports[0], ports[1], ports[2], ports[3], ports[4]
	host := "127.0.0.1"
	if !bindIP.IsUnspecified() && !(bindIP.IsLoopback() && bindIP.To4() != nil) {
		host = bindIP.String()
	}
	c.url = "https://" + net.JoinHostPort(host, strconv.Itoa(c.apiPort))
	c.advertiseURL = "https://" + net.JoinHostPort(c.advertise.String(), strconv.Itoa(c.apiPort))

	for _, d := range []string{"pki", "etcd", "logs", "pids", "certs"} {
		if err := os.MkdirAll(c.path(d), 0o700); err != nil {
			return nil, fmt.Errorf("controlplane: %w", err)
		}
	}
	if err := c.writePKI(); err != nil {
		return nil, err
	}
	if err := c.makeClients(); err != nil {
		return nil, err
	}
	return c, nil
}

type portWish struct {
	host string
	port int // 0: any free port
}

// freePorts reserves the wished ports, all at once so that no two wishes
// get the same port, and releases them for the processes to take. A port
// left to us is picked below the kernel's ephemeral range: between Prepare
// and Run, or across an apiserver restart, the source port of some client
// connection could otherwise take it.
func freePorts(wishes []portWish) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	lo := ephemeralLow()
	ports := make([]int, len(wishes))
	for i, w := range wishes {
		var l net.Listener
		var err error
		if w.port == 0 && lo > minPort+1000 {
			for try := 0; try < 100 && l == nil; try++ {
				p := minPort + mathrand.IntN(lo-minPort)
				l, _ = net.Listen("tcp", net.JoinHostPort(w.host, strconv.Itoa(p)))
			}
		}
		if l == nil {
			l, err = net.Listen("tcp", net.JoinHostPort(w.host, strconv.Itoa(w.port)))
		}
		if err != nil {
			return nil, fmt.Errorf("controlplane: port %s:%d: %w", w.host, w.port, err)
		}
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

// minPort is the lowest port freePorts picks by itself.
const minPort = 20000

// ephemeralLow is the start of the kernel's range of ephemeral ports (0 if
// unknown).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0
	}
	lo, _ := strconv.Atoi(f[0])
	return lo
}

func (c *ControlPlane) makeClients() error {
	c.restConfig = &rest.Config{
		Host: c.url,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   c.ca.certPEM,
			CertData: c.adminCertPEM,
			KeyData:  c.adminKeyPEM,
		},
		QPS:   50,
		Burst: 100,
	}
	var err error
	if c.client, err = kubernetes.NewForConfig(rest.CopyConfig(c.restConfig)); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	rt, err := rest.TransportFor(rest.CopyConfig(c.restConfig))
	if err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	c.probe = &http.Client{Transport: rt, Timeout: 5 * time.Second}
	c.insecure = &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
		Timeout:   5 * time.Second,
	}
	return nil
}

func (c *ControlPlane) path(elem ...string) string {
	return filepath.Join(append([]string{c.dir}, elem...)...)
}

// Run starts etcd and the apiserver, creates the objects kubeadm init
// creates for joining nodes, starts the controller-manager and the
// scheduler, and waits until the default ServiceAccount (and the root CA
// ConfigMap pods mount) exist in the "default" namespace. On failure every
// process it started is stopped and the error carries the tail of the
// failing component's log.
func (c *ControlPlane) Run(ctx context.Context) (err error) {
	c.mu.Lock()
	running := len(c.procs) > 0
	c.mu.Unlock()
	if running {
		return errors.New("controlplane: Run: processes are already running")
	}
	defer func() {
		if err != nil {
			if serr := c.Stop(); serr != nil {
				err = errors.Join(err, serr)
			}
		}
	}()
	phase := func(name string, f func() error) error {
		t := time.Now()
		if err := f(); err != nil {
			return err
		}
		c.mu.Lock()
		c.timings[name] = time.Since(t)
		c.mu.Unlock()
		return nil
	}
	if err := phase(Etcd, func() error {
		return c.startAndWait(ctx, Etcd, c.etcdArgs(), c.etcdHealthy)
	}); err != nil {
		return err
	}
	if err := phase(APIServer, func() error { return c.StartAPIServer(ctx) }); err != nil {
		return err
	}
	if err := phase("kubeadm-objects", func() error { return c.createClusterObjects(ctx) }); err != nil {
		return err
	}
	if err := phase("controllers", func() error {
		// Started together, waited for in turn.
		cm, err := c.startComponent(ControllerManager, c.controllerManagerArgs())
		if err != nil {
			return err
		}
		sched, err := c.startComponent(Scheduler, c.schedulerArgs())
		if err != nil {
			return err
		}
		if err := c.waitHealthy(ctx, cm, c.healthz(c.cmPort)); err != nil {
			return err
		}
		return c.waitHealthy(ctx, sched, c.healthz(c.schedPort))
	}); err != nil {
		return err
	}
	if err := phase("default-serviceaccount", func() error { return c.waitDefaultServiceAccount(ctx) }); err != nil {
		return err
	}
	c.startApprover()
	return nil
}

// startApprover runs the kubelet-serving CSR approver (servingcsr.go); its
// decisions go to logs/serving-csr.log.
func (c *ControlPlane) startApprover() {
	logPath := c.path("logs", "serving-csr.log")
	var mu sync.Mutex
	logf := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		f, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return
		}
		fmt.Fprintf(f, "%s "+format+"\n", append([]any{time.Now().UTC().Format(time.RFC3339)}, args...)...)
		f.Close()
	}
	a := startServingApprover(c.client, logf)
	c.mu.Lock()
	c.approver = a
	c.mu.Unlock()
}

// StartAPIServer (re)starts the apiserver on its port and waits for
// /readyz. With StopAPIServer it lets tests make the apiserver appear late
// or go away for a while; etcd and the other components keep running.
func (c *ControlPlane) StartAPIServer(ctx context.Context) error {
	return c.startAndWait(ctx, APIServer, c.apiserverArgs(), c.apiserverReady)
}

// StopAPIServer stops only the apiserver (SIGTERM, SIGKILL after 10 s).
func (c *ControlPlane) StopAPIServer() error {
	c.mu.Lock()
	p := c.procs[APIServer]
	delete(c.procs, APIServer)
	c.mu.Unlock()
	if p == nil {
		return nil
	}
	err := p.stop(c.stopGrace)
	c.closeIdleConnections()
	return err
}

// Stop ends every process (SIGTERM to its process group, SIGKILL after
// 10 s) and waits until they are reaped: controller-manager and scheduler
// first, then the apiserver, then etcd. It may be called any number of
// times.
func (c *ControlPlane) Stop() error {
	c.mu.Lock()
	procs := c.procs
	c.procs = map[string]*proc{}
	approver := c.approver
	c.approver = nil
	c.mu.Unlock()
	if approver != nil {
		approver.stop()
	}
	var errs []error
	var mu sync.Mutex
	for _, wave := range [][]string{{ControllerManager, Scheduler}, {APIServer}, {Etcd}} {
		var wg sync.WaitGroup
		for _, name := range wave {
			if p := procs[name]; p != nil {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := p.stop(c.stopGrace); err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
				}()
			}
		}
		wg.Wait()
	}
	c.closeIdleConnections()
	return errors.Join(errs...)
}

func (c *ControlPlane) closeIdleConnections() {
	c.probe.CloseIdleConnections()
	c.insecure.CloseIdleConnections()
}

// startComponent starts a process and registers it.
func (c *ControlPlane) startComponent(name string, args []string) (*proc, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.procs[name]; p != nil && p.running() {
		return nil, fmt.Errorf("controlplane: %s is already running (pid %d)", name, p.pid())
	}
	p, err := startProc(c.dir, name, filepath.Join(c.binDir, name), args, c.env(), c.o.Log)
	if err != nil {
		return nil, err
	}
	c.procs[name] = p
	return p, nil
}

func (c *ControlPlane) startAndWait(ctx context.Context, name string, args []string, probe func(context.Context) error) error {
	p, err := c.startComponent(name, args)
	if err != nil {
		return err
	}
	return c.waitHealthy(ctx, p, probe)
}

// waitHealthy polls probe until it passes. If the process exits or the
// wait times out, the process is stopped and unregistered, and the error
// carries the tail of its log.
func (c *ControlPlane) waitHealthy(ctx context.Context, p *proc, probe func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	last := errors.New("not probed yet")
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var failure error
	for failure == nil {
		select {
		case <-p.exited:
			failure = fmt.Errorf("controlplane: %s exited during startup (%s); last probe: %v", p.name, p.exitStatus(), last)
		case <-ctx.Done():
			failure = fmt.Errorf("controlplane: %s not healthy: %w; last probe: %v", p.name, ctx.Err(), last)
		case <-tick.C:
			pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
			err := probe(pctx)
			pcancel()
			if err == nil {
				return nil
			}
			if ctx.Err() == nil {
				last = err
			}
		}
	}
	c.mu.Lock()
	if c.procs[p.name] == p {
		delete(c.procs, p.name)
	}
	c.mu.Unlock()
	_ = p.stop(c.stopGrace)
	return fmt.Errorf("%w\n--- tail of %s ---\n%s", failure, p.logPath, p.logTail())
}

func (c *ControlPlane) etcdURL() string {
	return "http://127.0.0.1:" + strconv.Itoa(c.etcdPort)
}

func (c *ControlPlane) etcdHealthy(ctx context.Context) error {
	body, err := get(ctx, http.DefaultClient, c.etcdURL()+"/health")
	if err != nil {
		return err
	}
	if !strings.Contains(body, `"health":"true"`) {
		return fmt.Errorf("etcd /health: %s", body)
	}
	return nil
}

func (c *ControlPlane) apiserverReady(ctx context.Context) error {
	_, err := get(ctx, c.probe, c.url+"/readyz?verbose")
	return err
}

func (c *ControlPlane) healthz(port int) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := get(ctx, c.insecure, "https://127.0.0.1:"+strconv.Itoa(port)+"/healthz")
		return err
	}
}

// get fetches url and fails unless the answer is 200; for a failing
// readiness check the error names the failing checks.
func get(ctx context.Context, hc *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	body := string(b)
	if resp.StatusCode != http.StatusOK {
		var failed []string
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "[-]") {
				failed = append(failed, l)
			}
		}
		if len(failed) > 0 {
			body = strings.Join(failed, "; ")
		} else if len(body) > 300 {
			body = body[:300] + "[...]"
		}
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(body))
	}
	return body, nil
}

// env is the children's environment: ours without the variables that
// would reconfigure them behind their flags' back.
func (c *ControlPlane) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "ETCD_") || strings.HasPrefix(kv, "KUBECONFIG=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func (c *ControlPlane) etcdArgs() []string {
	peer := "http://127.0.0.1:" + strconv.Itoa(c.etcdPeerPort)
	return append([]string{
		"--name=default",
		"--data-dir=" + c.path("etcd"),
		"--listen-client-urls=" + c.etcdURL(),
		"--advertise-client-urls=" + c.etcdURL(),
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=default=" + peer,
		"--initial-cluster-state=new",
		"--initial-cluster-token=evelet-controlplane",
		// A test cluster need not survive a power loss.
		"--unsafe-no-fsync",
	}, c.o.ExtraArgs[Etcd]...)
}

func (c *ControlPlane) apiserverArgs() []string {
	pki := func(f string) string { return c.path("pki", f) }
	args := []string{
		"--advertise-address=" + c.advertise.String(),
		"--bind-address=" + c.bindAddr,
		"--secure-port=" + strconv.Itoa(c.apiPort),
		"--etcd-servers=" + c.etcdURL(),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--enable-bootstrap-token-auth=true",
		// Token discovery reads kube-public/cluster-info anonymously.
		"--anonymous-auth=true",
		"--allow-privileged=true",
		"--client-ca-file=" + pki("ca.crt"),
		"--tls-cert-file=" + pki("apiserver.crt"),
		"--tls-private-key-file=" + pki("apiserver.key"),
		"--kubelet-client-certificate=" + pki("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + pki("apiserver-kubelet-client.key"),
		// Kubelet serving certificates are verified: they come from the
		// cluster CA (serverTLSBootstrap; the harness approves the CSRs).
		"--kubelet-certificate-authority=" + pki("ca.crt"),
		"--requestheader-client-ca-file=" + pki("front-proxy-ca.crt"),
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + pki("front-proxy-client.crt"),
		"--proxy-client-key-file=" + pki("front-proxy-client.key"),
		// Node names do not resolve here: logs/exec go to the InternalIP.
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki("sa.pub"),
		"--service-account-signing-key-file=" + pki("sa.key"),
		"--service-cluster-ip-range=" + c.o.ServiceCIDR,
		"--cert-dir=" + c.path("certs", APIServer),
		// On SIGTERM, end the watches (of the controller-manager, the
		// scheduler, kubelets) instead of waiting for them up to the
		// request timeout (60 s): StopAPIServer then takes ~1 s, not a
		// SIGKILL after 10 s.
		"--shutdown-watch-termination-grace-period=2s",
	}
	if c.advertise.IsLoopback() {
		// Endpoints may not hold loopback addresses: the reconciler of the
		// "kubernetes" Service's endpoints would fail forever.
		args = append(args, "--endpoint-reconciler-type=none")
	}
	return append(args, c.o.ExtraArgs[APIServer]...)
}

func (c *ControlPlane) controllerManagerArgs() []string {
	kc := c.path("controller-manager.conf")
	pki := func(f string) string { return c.path("pki", f) }
	args := []string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(c.cmPort),
		"--cert-dir=" + c.path("certs", ControllerManager),
		"--cluster-signing-cert-file=" + pki("ca.crt"),
		"--cluster-signing-key-file=" + pki("ca.key"),
		"--root-ca-file=" + pki("ca.crt"),
		"--requestheader-client-ca-file=" + pki("front-proxy-ca.crt"),
		"--service-account-private-key-file=" + pki("sa.key"),
		"--use-service-account-credentials=true",
		"--controllers=*,bootstrapsigner,tokencleaner",
		"--leader-elect=false",
		"--allocate-node-cidrs=false",
		"--service-cluster-ip-range=" + c.o.ServiceCIDR,
	}
	if c.o.ClusterCIDR != "" {
		args = append(args, "--cluster-cidr="+c.o.ClusterCIDR)
	}
	if c.o.NodeMonitorGracePeriod > 0 {
		args = append(args, "--node-monitor-grace-period="+c.o.NodeMonitorGracePeriod.String())
	}
	return append(args, c.o.ExtraArgs[ControllerManager]...)
}

func (c *ControlPlane) schedulerArgs() []string {
	kc := c.path("scheduler.conf")
	return append([]string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(c.schedPort),
		"--cert-dir=" + c.path("certs", Scheduler),
		"--leader-elect=false",
	}, c.o.ExtraArgs[Scheduler]...)
}

// URL is the apiserver's URL as this host reaches it,
// https://127.0.0.1:<port> (unless BindAddress names another address).
func (c *ControlPlane) URL() string { return c.url }

// AdvertiseURL is the apiserver URL nodes are told about (the server in
// kube-public/cluster-info): https://<AdvertiseAddress>:<port>.
func (c *ControlPlane) AdvertiseURL() string { return c.advertiseURL }

// AdminKubeconfig is the path of the cluster-admin kubeconfig (client
// certificate CN=kubernetes-admin, O=system:masters).
func (c *ControlPlane) AdminKubeconfig() string { return c.path("admin.conf") }

// Client is a clientset with the admin credentials.
func (c *ControlPlane) Client() kubernetes.Interface { return c.client }

// RESTConfig is a copy of the admin client configuration.
func (c *ControlPlane) RESTConfig() *rest.Config { return rest.CopyConfig(c.restConfig) }

// CACertPEM is the cluster CA certificate.
func (c *ControlPlane) CACertPEM() []byte { return append([]byte(nil), c.ca.certPEM...) }

// CACert is the parsed cluster CA certificate.
func (c *ControlPlane) CACert() *x509.Certificate { return c.ca.cert }

// CAPin is the kubeadm discovery pin of the CA, "sha256:<hex>" of its
// SubjectPublicKeyInfo.
func (c *ControlPlane) CAPin() string { return pubkeypin.Hash(c.ca.cert) }

// Dir is the state directory (absolute, symlinks resolved).
func (c *ControlPlane) Dir() string { return c.dir }

// BinDir is the directory the binaries are run from.
func (c *ControlPlane) BinDir() string { return c.binDir }

// LogPath is the log file of a component (Etcd, APIServer, ...); it
// accumulates across restarts.
func (c *ControlPlane) LogPath(name string) string { return c.path("logs", name+".log") }

// Processes maps the name of each running component to its pid.
func (c *ControlPlane) Processes() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := map[string]int{}
	for name, p := range c.procs {
		if p.running() {
			m[name] = p.pid()
		}
	}
	return m
}

// Timings reports how long each phase of the last Run took: Etcd,
// APIServer, "kubeadm-objects", "controllers", "default-serviceaccount".
func (c *ControlPlane) Timings() map[string]time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string]time.Duration, len(c.timings))
	for k, v := range c.timings {
		m[k] = v
	}
	return m
}

// Kubectl runs kubectl with the admin kubeconfig and returns its combined
// output.
func (c *ControlPlane) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, "kubectl"),
		append([]string{"--kubeconfig=" + c.AdminKubeconfig()}, args...)...)
	cmd.Env = c.env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}
