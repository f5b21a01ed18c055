package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/internal/layout"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/eve"
	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/nodedns"
	"github.com/lf-edge/evelet/version"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"
)

func newLogger(level string) (*logrus.Entry, error) {
	l := logrus.New()
	lv, err := logrus.ParseLevel(level)
	if err != nil {
		return nil, err
	}
	l.SetLevel(lv)
	l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	return logrus.NewEntry(l), nil
}

// agentFlags are the agent's command-line flags. evelet doctor defines the
// same ones, so the agent's whole command line can be given to it.
type agentFlags struct {
	stateDir      *string
	runDir        *string
	joinFile      *string
	eveRun        *string
	evePersist    *string
	eveCerts      *string
	absentFor     *time.Duration
	drainTimeout  *time.Duration
	metricsAddr   *string
	ctrd          *string
	kubeletPort   *int
	healthzPort   *int
	cgroupRoot    *string
	cgroupDriver  *string
	vmCNIConf     *string
	vmCNIBin      *string
	noVM          *bool
	kvmDev        *string
	kubeProxy     *bool
	nodeDNS       *bool
	nodeDNSAddr   *string
	clusterDomain *string
	level         *string
	cniOpts       agent.CNIOptions
}

func newAgentFlags(fs *flag.FlagSet) *agentFlags {
	f := &agentFlags{}
	f.stateDir = fs.String("state-dir", layout.DefaultStateDir, "persistent state root (credentials, kubelet root, logs)")
	f.runDir = fs.String("run-dir", "/run/evelet", "volatile state root (sockets, status)")
	f.joinFile = fs.String("join-file", "", "YAML join material (apiServer, token, caCertHashes or kubeconfig; nodeName, deviceUUID); replaces the EVE channel")
	f.eveRun = fs.String("eve-run", "/run", "EVE's volatile root (pubsub topics)")
	f.evePersist = fs.String("eve-persist", "/persist", "EVE's persistent root (checkpoint, device ECDH key, persistent topics)")
	f.eveCerts = fs.String("eve-controller-certs", "", "only directory searched for controller certificates (default: where the running EVE publishes them: <eve-run>/zedagent/ControllerCert since 16.12.0, <eve-persist>/status/zedagent/ControllerCert before)")
	f.absentFor = fs.Duration("join-file-absent-for", agent.DefaultAbsentFor, "how long the join file must stay missing before the device leaves its cluster (a file saying only 'leave: true' leaves at once)")
	f.drainTimeout = fs.Duration("drain-timeout", 5*time.Minute, "how long a drain may take when leaving a cluster")
	f.metricsAddr = fs.String("metrics-addr", "127.0.0.1:10260", "address of the Prometheus /metrics endpoint (empty: off)")
	f.ctrd = fs.String("containerd", "unix:///run/containerd-user/containerd.sock", "containerd CRI endpoint pods run on")
	f.kubeletPort = fs.Int("kubelet-port", 0, "kubelet API port (0: 10250)")
	f.healthzPort = fs.Int("kubelet-healthz-port", 0, "kubelet healthz port (0: 10248)")
	f.cgroupRoot = fs.String("kubelet-cgroup-root", "", "cgroup the kubelet puts its pods under (empty: /); must exist in every hierarchy")
	f.cgroupDriver = fs.String("cgroup-driver", "cgroupfs", "cgroup driver shared by the kubelet and containerd")
	f.vmCNIConf = fs.String("vm-cni-conf-dir", "", "CNI configuration of VM pods' network, as containerd's (empty: --cni-conf-dir; both empty: VM pods get loopback only)")
	f.vmCNIBin = fs.String("vm-cni-bin-dir", "", "CNI plugin directories for VM pods, comma-separated (empty: --cni-bin-dir, else /opt/cni/bin)")
	f.noVM = fs.Bool("no-vm-pods", false, "turn VM pods (RuntimeClass handler eve-vm) off")
	f.kvmDev = fs.String("vm-kvm-device", "/dev/kvm", "KVM device for VM pods; a path that does not exist turns KVM off (software emulation, if the owner allows it)")
	f.kubeProxy = fs.Bool("kube-proxy", false, "run kube-proxy (nftables mode) for Services on the device; needs nft and the RBAC binding in deploy/evelet-kube-proxy-rbac.yaml (docs/services.md)")
	f.nodeDNS = fs.Bool("node-dns", true, "run the node-local DNS server (CoreDNS) on --node-dns-address and give it to pods as their cluster DNS")
	f.nodeDNSAddr = fs.String("node-dns-address", nodedns.DefaultAddress, "link-local IPv4 address of the node-local DNS server, on interface "+nodedns.DefaultLinkName)
	f.clusterDomain = fs.String("cluster-domain", "cluster.local", "the cluster's DNS domain")
	f.level = fs.String("log-level", "info", "log level")
	cniFlags(fs, &f.cniOpts)
	return f
}

func runAgent(args []string) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	f := newAgentFlags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := newLogger(*f.level)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	eveRoot := pubsub.Root{Run: *f.eveRun, Persist: *f.evePersist}
	var src intent.Source = &eve.Source{Root: eveRoot, ControllerCerts: *f.eveCerts, Log: log.WithField("component", "eve")}
	if *f.joinFile != "" {
		src = &agent.JoinFile{Path: *f.joinFile, AbsentFor: *f.absentFor}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if *f.metricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		srv := &http.Server{Addr: *f.metricsAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
				log.WithError(err).Error("metrics endpoint")
			}
		}()
		defer srv.Close()
	}
	self, err := os.Executable()
	if err != nil {
		log.WithError(err).Error("cannot find own binary")
		return 1
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	log.WithField("version", version.String()).Info("evelet agent starting")
	a := agent.New(agent.Config{
		StateDir: *f.stateDir, RunDir: *f.runDir, ContainerdEndpoint: *f.ctrd,
		Source: src, Self: self, DrainTimeout: *f.drainTimeout, Metrics: reg,
		KubeletPort: int32(*f.kubeletPort), KubeletHealthzPort: int32(*f.healthzPort),
		CgroupDriver: *f.cgroupDriver, KubeletCgroupRoot: *f.cgroupRoot, Log: log,
		VM:        vmConfig(*f.noVM, *f.vmCNIConf, *f.vmCNIBin, *f.kvmDev, f.cniOpts),
		CNI:       f.cniOpts,
		KubeProxy: agent.KubeProxyConfig{Enabled: *f.kubeProxy},
		EVERoot:   eveRoot,
		// Only the EVE channel says EVE is about to reboot the device.
		CoordinateOSUpdates: *f.joinFile == "",
		NodeDNS:             agent.NodeDNSOptions{Enabled: *f.nodeDNS, Address: *f.nodeDNSAddr, ClusterDomain: *f.clusterDomain},
	})
	if err := a.Run(ctx); err != nil && ctx.Err() == nil {
		log.WithError(err).Error("agent stopped")
		return 1
	}
	log.Info("evelet agent stopped")
	return 0
}
