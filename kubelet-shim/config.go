// Package kubeletshim owns the vendored kubelet: the KubeletConfiguration and
// command line evelet generates for it, and the child process that runs it.
// When the kubelet runs is the agent's decision, not this package's. The
// kubelet itself (`evelet kubelet`) is the subpackage kubeletcmd, so what
// imports this package does not link the kubelet.
package kubeletshim

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/lf-edge/evelet/internal/atomicfile"
	"github.com/lf-edge/evelet/internal/layout"
	"github.com/lf-edge/evelet/internal/nodelabels"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/util/validation"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// Options are the facts the agent knows about the device and its paths.
type Options struct {
	NodeName   string
	DeviceUUID string
	OSVersion  string
	// ExtraLabels are further node labels (the VM runtime's, agent/vmbackend.go).
	ExtraLabels map[string]string
	// NodeIP is passed to the kubelet when set; otherwise it detects one.
	NodeIP string
	// StateDir is persistent: kubelet root dir, pod logs, credentials.
	StateDir string
	// CredentialsDir holds the bootstrap kubeconfig, kubeconfig, pki, ca.crt.
	CredentialsDir string
	// CRIEndpoint is evelet's CRI socket ("unix:///run/evelet/cri.sock").
	CRIEndpoint string
	// CgroupDriver is "cgroupfs" (EVE) or "systemd".
	CgroupDriver string
	// CgroupV1 is true when the host mounts cgroup v1 (many EVE releases do).
	CgroupV1      bool
	ClusterDNS    []string
	ClusterDomain string
	// Port / HealthzPort override 10250 / 10248 (0 keeps the default).
	Port        int32
	HealthzPort int32
	// CgroupRoot is the cgroup the kubelet puts kubepods under ("" keeps
	// "/"). Two kubelets on one host need different roots: each removes
	// the pod cgroups under its own that it does not know.
	CgroupRoot string
	// ConfigItems are the device owner's "evelet." config items; the
	// "evelet.kubelet." ones set reservations and limits (items.go).
	ConfigItems map[string]string
	// APICacheKubeconfig, when set, is the kubelet's kubeconfig to the
	// agent's local API cache (apicache): the kubelet talks through it and
	// does not bootstrap (its client certificate exists already).
	APICacheKubeconfig string
	// PolicyFile is the guardrail policy the agent keeps current
	// (WritePolicyFile); the kubelet's hostPath guard reads it. Empty: the
	// guard allows no host path at all.
	PolicyFile string
}

// Validate rejects options the kubelet would fail on later with a less
// clear message.
func (o *Options) Validate() error {
	if errs := validation.IsDNS1123Subdomain(o.NodeName); len(errs) > 0 {
		return fmt.Errorf("node name %q: %s", o.NodeName, strings.Join(errs, "; "))
	}
	for k, v := range o.labels() {
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			return fmt.Errorf("label %s=%q: %s", k, v, strings.Join(errs, "; "))
		}
	}
	if o.StateDir == "" || o.CredentialsDir == "" || o.CRIEndpoint == "" {
		return fmt.Errorf("kubelet options need StateDir, CredentialsDir and CRIEndpoint")
	}
	return nil
}

func (o *Options) labels() map[string]string {
	l := map[string]string{}
	for k, v := range o.ExtraLabels {
		l[k] = v
	}
	if o.DeviceUUID != "" {
		l[nodelabels.DeviceUUID] = o.DeviceUUID
	}
	if o.OSVersion != "" {
		l[nodelabels.OSVersion] = nodelabels.SanitizeValue(o.OSVersion)
	}
	return l
}

// ConfigPath, RootDir, PodLogsDir are where the generated files live;
// internal/layout names them.
func (o *Options) ConfigPath() string { return o.state().KubeletConfig() }
func (o *Options) RootDir() string    { return o.state().KubeletRoot() }
func (o *Options) PodLogsDir() string { return o.state().PodLogs() }

func (o *Options) state() layout.State       { return layout.State{Dir: o.StateDir} }
func (o *Options) creds() layout.Credentials { return layout.Credentials{Dir: o.CredentialsDir} }

// Kubeconfig is the kubelet's own kubeconfig (the node's credentials).
func (o *Options) Kubeconfig() string { return o.creds().Kubeconfig() }

// Config returns the KubeletConfiguration for the device.
//
// Edge defaults (see docs/kubelet.md): the node heartbeat is the Lease,
// renewed every 10 s of its 40 s duration, which the node lifecycle
// controller needs to keep the node Ready; the full NodeStatus is only
// re-sent every 5 min unless something changes, which keeps a metered
// uplink quiet. Eviction thresholds are absolute so a small device keeps
// working room for EVE itself.
func (o *Options) Config() *kubeletv1beta1.KubeletConfiguration {
	c := &kubeletv1beta1.KubeletConfiguration{
		TypeMeta: metav1.TypeMeta{APIVersion: "kubelet.config.k8s.io/v1beta1", Kind: "KubeletConfiguration"},
		Authentication: kubeletv1beta1.KubeletAuthentication{
			Anonymous: kubeletv1beta1.KubeletAnonymousAuthentication{Enabled: ptr.To(false)},
			Webhook:   kubeletv1beta1.KubeletWebhookAuthentication{Enabled: ptr.To(true)},
			X509:      kubeletv1beta1.KubeletX509Authentication{ClientCAFile: o.creds().ClusterCA()},
		},
		Authorization:            kubeletv1beta1.KubeletAuthorization{Mode: kubeletv1beta1.KubeletAuthorizationModeWebhook},
		RotateCertificates:       true,
		ContainerRuntimeEndpoint: o.CRIEndpoint,
		CgroupDriver:             o.CgroupDriver,
		ProviderID:               "eve://" + o.DeviceUUID,
		PodLogsDir:               o.PodLogsDir(),
		ReadOnlyPort:             0,
		// Bound to the cluster interface only (docs/kubelet.md); the
		// healthz port stays on loopback.
		Address:            o.NodeIP,
		HealthzBindAddress: "127.0.0.1",
		// Serving certificate from the cluster CA through a
		// kubernetes.io/kubelet-serving CSR, so an apiserver with
		// --kubelet-certificate-authority can tell this kubelet from a pod
		// that took over its port.
		// nodes/proxy must not reach the host's /var/log, pprof or the
		// log-level switch: a cluster-admin is a tenant here.
		EnableSystemLogHandler:    ptr.To(false),
		EnableSystemLogQuery:      ptr.To(false),
		EnableProfilingHandler:    ptr.To(false),
		EnableDebugFlagsHandler:   ptr.To(false),
		NodeStatusUpdateFrequency: metav1.Duration{Duration: 10 * time.Second},
		NodeStatusReportFrequency: metav1.Duration{Duration: 5 * time.Minute},
		NodeLeaseDurationSeconds:  40,
		RuntimeRequestTimeout:     metav1.Duration{Duration: 2 * time.Minute},
		// EVE may run with zram swap; the kubelet must not refuse to start.
		FailSwapOn:    ptr.To(false),
		ClusterDomain: o.ClusterDomain,
		ClusterDNS:    o.ClusterDNS,
		EvictionHard: map[string]string{
			"memory.available":  "200Mi",
			"nodefs.available":  "10%",
			"nodefs.inodesFree": "5%",
			"imagefs.available": "15%",
			"pid.available":     "10%",
		},
		ShutdownGracePeriod:             metav1.Duration{Duration: 30 * time.Second},
		ShutdownGracePeriodCriticalPods: metav1.Duration{Duration: 10 * time.Second},
		// The kubelet passes every namespaced sysctl on to the CRI, where
		// evelet's guardrail decides (one place of enforcement, one knob:
		// evelet.policy.allowed-unsafe-sysctls).
		AllowedUnsafeSysctls: []string{"kernel.shm*", "kernel.msg*", "kernel.sem", "fs.mqueue.*", "net.*"},
		// Pods without a seccomp profile get the runtime's default one
		// rather than none: a tenant's syscalls are filtered unless it asks.
		SeccompDefault:        ptr.To(true),
		SerializeImagePulls:   ptr.To(false),
		MaxParallelImagePulls: ptr.To[int32](2),
		// No KUBE-FIREWALL jumps in EVE's INPUT/OUTPUT chains, no hint or
		// canary chains in its iptables tables: they serve iptables-mode
		// kube-proxy (route_localnet), and evelet's kube-proxy runs in
		// nftables mode in its own tables (docs/services.md).
		MakeIPTablesUtilChains: ptr.To(false),
	}
	k := o.kubeletItems()
	c.SystemReserved, c.KubeReserved, c.PodPidsLimit = k.systemReserved, k.kubeReserved, ptr.To(k.podPidsLimit)
	c.ServerTLSBootstrap = k.serverTLSBootstrap
	if c.CgroupDriver == "" {
		c.CgroupDriver = "cgroupfs"
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = "cluster.local"
	}
	if o.CgroupV1 {
		// kubelet 1.35 refuses cgroup v1 unless told otherwise; EVE still uses it.
		c.FailCgroupV1 = ptr.To(false)
	}
	if o.Port != 0 {
		c.Port = o.Port
	}
	if o.HealthzPort != 0 {
		c.HealthzPort = ptr.To(o.HealthzPort)
	}
	c.CgroupRoot = o.CgroupRoot
	return c
}

// WriteConfig writes the KubeletConfiguration to ConfigPath atomically.
// Without a NodeIP it picks the address of the default-route interface
// (as the kubelet would) and pins it, so the kubelet listens there and
// reports it: the kubelet never listens on every address of the device.
func (o *Options) WriteConfig() error {
	if err := o.Validate(); err != nil {
		return err
	}
	if o.NodeIP == "" {
		ip, err := utilnet.ChooseHostInterface()
		if err != nil {
			return fmt.Errorf("kubelet address: no node IP given and none found: %w", err)
		}
		o.NodeIP = ip.String()
	}
	b, err := yaml.Marshal(o.Config())
	if err != nil {
		return err
	}
	for _, d := range []string{o.RootDir(), o.PodLogsDir()} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return err
		}
	}
	return atomicfile.WriteFile(o.ConfigPath(), b, 0o600)
}

// Args is the kubelet command line (everything not expressible in the
// config file).
func (o *Options) Args() []string {
	var a []string
	if o.PolicyFile != "" {
		// evelet kubelet takes this one itself (kubelet-shim/kubeletcmd.Run).
		a = append(a, PolicyFileFlag+"="+o.PolicyFile)
	}
	a = append(a, "--config="+o.ConfigPath())
	if o.APICacheKubeconfig != "" {
		a = append(a, "--kubeconfig="+o.APICacheKubeconfig)
	} else {
		a = append(a, "--bootstrap-kubeconfig="+o.creds().BootstrapKubeconfig(), "--kubeconfig="+o.Kubeconfig())
	}
	a = append(a,
		"--cert-dir="+o.creds().CertDir(),
		"--root-dir="+o.RootDir(),
		"--hostname-override="+o.NodeName,
	)
	if l := o.labels(); len(l) > 0 {
		kv := make([]string, 0, len(l))
		for k, v := range l {
			kv = append(kv, k+"="+v)
		}
		sort.Strings(kv)
		a = append(a, "--node-labels="+strings.Join(kv, ","))
	}
	if o.NodeIP != "" {
		a = append(a, "--node-ip="+o.NodeIP)
	}
	return a
}

// HostCgroupV1 reports whether /sys/fs/cgroup is a cgroup v1 hierarchy.
func HostCgroupV1() bool {
	_, err := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	return os.IsNotExist(err)
}
