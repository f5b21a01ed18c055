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

func runAgent(args []string) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	stateDir := fs.String("state-dir", layout.DefaultStateDir, "persistent state root (credentials, kubelet root, logs)")
	runDir := fs.String("run-dir", "/run/evelet", "volatile state root (sockets, status)")
	joinFile := fs.String("join-file", "", "YAML join material (apiServer, token, caCertHashes or kubeconfig; nodeName, deviceUUID); replaces the EVE channel")
	eveRun := fs.String("eve-run", "/run", "EVE's volatile root (pubsub topics)")
	evePersist := fs.String("eve-persist", "/persist", "EVE's persistent root (checkpoint, device ECDH key, persistent topics)")
	eveCerts := fs.String("eve-controller-certs", "", "only directory searched for controller certificates (default: where the running EVE publishes them: <eve-run>/zedagent/ControllerCert since 16.12.0, <eve-persist>/status/zedagent/ControllerCert before)")
	absentFor := fs.Duration("join-file-absent-for", agent.DefaultAbsentFor, "how long the join file must stay missing before the device leaves its cluster (a file saying only 'leave: true' leaves at once)")
	drainTimeout := fs.Duration("drain-timeout", 5*time.Minute, "how long a drain may take when leaving a cluster")
	metricsAddr := fs.String("metrics-addr", "127.0.0.1:10260", "address of the Prometheus /metrics endpoint (empty: off)")
	ctrd := fs.String("containerd", "unix:///run/containerd-user/containerd.sock", "containerd CRI endpoint pods run on")
	kubeletPort := fs.Int("kubelet-port", 0, "kubelet API port (0: 10250)")
	healthzPort := fs.Int("kubelet-healthz-port", 0, "kubelet healthz port (0: 10248)")
	cgroupRoot := fs.String("kubelet-cgroup-root", "", "cgroup the kubelet puts its pods under (empty: /); must exist in every hierarchy")
	cgroupDriver := fs.String("cgroup-driver", "cgroupfs", "cgroup driver shared by the kubelet and containerd")
	vmCNIConf := fs.String("vm-cni-conf-dir", "", "CNI configuration of VM pods' network, as containerd's (empty: --cni-conf-dir; both empty: VM pods get loopback only)")
	vmCNIBin := fs.String("vm-cni-bin-dir", "", "CNI plugin directories for VM pods, comma-separated (empty: --cni-bin-dir, else /opt/cni/bin)")
	noVM := fs.Bool("no-vm-pods", false, "turn VM pods (RuntimeClass handler eve-vm) off")
	kvmDev := fs.String("vm-kvm-device", "/dev/kvm", "KVM device for VM pods; a path that does not exist turns KVM off (software emulation, if the owner allows it)")
	kubeProxy := fs.Bool("kube-proxy", false, "run kube-proxy (nftables mode) for Services on the device; needs nft and the RBAC binding in deploy/evelet-kube-proxy-rbac.yaml (docs/services.md)")
	nodeDNS := fs.Bool("node-dns", true, "run the node-local DNS server (CoreDNS) on --node-dns-address and give it to pods as their cluster DNS")
	nodeDNSAddr := fs.String("node-dns-address", nodedns.DefaultAddress, "link-local IPv4 address of the node-local DNS server, on interface "+nodedns.DefaultLinkName)
	clusterDomain := fs.String("cluster-domain", "cluster.local", "the cluster's DNS domain")
	level := fs.String("log-level", "info", "log level")
	var cniOpts agent.CNIOptions
	cniFlags(fs, &cniOpts)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := newLogger(*level)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	eveRoot := pubsub.Root{Run: *eveRun, Persist: *evePersist}
	var src intent.Source = &eve.Source{Root: eveRoot, ControllerCerts: *eveCerts, Log: log.WithField("component", "eve")}
	if *joinFile != "" {
		src = &agent.JoinFile{Path: *joinFile, AbsentFor: *absentFor}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if *metricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		srv := &http.Server{Addr: *metricsAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
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
		StateDir: *stateDir, RunDir: *runDir, ContainerdEndpoint: *ctrd,
		Source: src, Self: self, DrainTimeout: *drainTimeout, Metrics: reg,
		KubeletPort: int32(*kubeletPort), KubeletHealthzPort: int32(*healthzPort),
		CgroupDriver: *cgroupDriver, KubeletCgroupRoot: *cgroupRoot, Log: log,
		VM:        vmConfig(*noVM, *vmCNIConf, *vmCNIBin, *kvmDev, cniOpts),
		CNI:       cniOpts,
		KubeProxy: agent.KubeProxyConfig{Enabled: *kubeProxy},
		EVERoot:   eveRoot,
		// Only the EVE channel says EVE is about to reboot the device.
		CoordinateOSUpdates: *joinFile == "",
		NodeDNS:             agent.NodeDNSOptions{Enabled: *nodeDNS, Address: *nodeDNSAddr, ClusterDomain: *clusterDomain},
	})
	if err := a.Run(ctx); err != nil && ctx.Err() == nil {
		log.WithError(err).Error("agent stopped")
		return 1
	}
	log.Info("evelet agent stopped")
	return 0
}
