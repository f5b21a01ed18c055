package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/lf-edge/evelet/tests/devnet"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// A stock node is the comparison for evelet in the fleet and join
// benchmarks: the upstream kubelet of the pinned release, unmodified
// (`make stock-kubelet`), on a devnet device of its own (network
// namespace, containerd, cgroup root, same power cycle and cleanup as an
// evelet device), joining as `kubeadm join` makes a kubelet join: a
// bootstrap kubeconfig with a bootstrap token, TLS bootstrapping, the
// CSR approved by the controller-manager through kubeadm's bindings, a
// KubeletConfiguration with kubeadm's settings.

// stockKubeletBin is the stock kubelet binary: $STOCK_KUBELET (the
// Makefile sets it), else built the way the Makefile builds it.
func stockKubeletBin(tb testing.TB) string {
	tb.Helper()
	if p := os.Getenv("STOCK_KUBELET"); p != "" {
		return p
	}
	cmd := exec.Command("make", "-C", env.root, "stock-kubelet")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("make stock-kubelet: %v\n%s", err, out)
	}
	return filepath.Join(env.root, "_output", "kube", "stock-kubelet")
}

// stockNode is a devnet device running the stock kubelet instead of the
// evelet agent.
type stockNode struct {
	*devnet.Device
	mu     sync.Mutex
	cfgErr error // writing the kubelet's config at a start
}

// newStockNode prepares devnet device n (nothing runs until Start) with a
// fresh bootstrap token.
func newStockNode(tb testing.TB, n int, kubelet string) *stockNode {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tok, err := env.cp.CreateBootstrapToken(ctx, 2*time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	s := &stockNode{}
	s.Device = env.devnet.NewDevice(tb, n, devnet.DeviceOptions{
		ControlPlane: env.cp, NoJoin: true, Name: fmt.Sprintf("stock-%d", n),
		Command: func(c devnet.CommandContext) []string {
			args, err := stockKubeletArgs(kubelet, c)
			s.mu.Lock()
			s.cfgErr = err
			s.mu.Unlock()
			return args
		},
	})
	if err := writeBootstrapKubeconfig(filepath.Join(s.Dir(), "kubernetes", "bootstrap-kubelet.conf"), tok); err != nil {
		tb.Fatal(err)
	}
	return s
}

// Start boots the device with its stock kubelet.
func (s *stockNode) Start() error {
	if err := s.Device.Start(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfgErr != nil {
		return fmt.Errorf("stock kubelet of %s: %w", s.NetNS(), s.cfgErr)
	}
	return nil
}

// writeBootstrapKubeconfig writes what `kubeadm join` writes to
// /etc/kubernetes/bootstrap-kubelet.conf: the cluster's CA and the
// bootstrap token as the user's credential.
func writeBootstrapKubeconfig(path, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubernetes"] = &clientcmdapi.Cluster{Server: env.cp.AdvertiseURL(), CertificateAuthorityData: env.cp.CACertPEM()}
	cfg.AuthInfos["tls-bootstrap-token-user"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["tls-bootstrap-token-user@kubernetes"] = &clientcmdapi.Context{Cluster: "kubernetes", AuthInfo: "tls-bootstrap-token-user"}
	cfg.CurrentContext = "tls-bootstrap-token-user@kubernetes"
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return clientcmd.WriteToFile(*cfg, path)
}

// stockKubeletArgs writes the node's KubeletConfiguration and returns the
// kubelet's command line. The settings are kubeadm's (v1.35: webhook
// authentication and authorization, client CA, certificate rotation,
// cluster DNS 10.96.0.10, static pods directory, no serving-certificate
// bootstrap); what differs is what this machine and a shared host need:
// paths under the device's directory, the cgroupfs driver and the cgroup
// root containerd and the kubelet share here, cgroup v1 allowed.
func stockKubeletArgs(bin string, c devnet.CommandContext) ([]string, error) {
	etc := filepath.Join(c.Dir, "kubernetes")
	root := filepath.Join(c.Dir, "persist", "kubelet")
	manifests := filepath.Join(etc, "manifests")
	for _, d := range []string{manifests, root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(etc, "ca.crt"), env.cp.CACertPEM(), 0o644); err != nil {
		return nil, err
	}
	cfg := kubeletv1beta1.KubeletConfiguration{
		TypeMeta: metav1.TypeMeta{APIVersion: "kubelet.config.k8s.io/v1beta1", Kind: "KubeletConfiguration"},
		Authentication: kubeletv1beta1.KubeletAuthentication{
			Anonymous: kubeletv1beta1.KubeletAnonymousAuthentication{Enabled: ptr.To(false)},
			Webhook:   kubeletv1beta1.KubeletWebhookAuthentication{Enabled: ptr.To(true)},
			X509:      kubeletv1beta1.KubeletX509Authentication{ClientCAFile: filepath.Join(etc, "ca.crt")},
		},
		Authorization:            kubeletv1beta1.KubeletAuthorization{Mode: kubeletv1beta1.KubeletAuthorizationModeWebhook},
		ClusterDNS:               []string{"10.96.0.10"},
		ClusterDomain:            "cluster.local",
		RotateCertificates:       true,
		StaticPodPath:            manifests,
		HealthzBindAddress:       "127.0.0.1",
		ContainerRuntimeEndpoint: c.CRIEndpoint,
		CgroupDriver:             "cgroupfs",
		CgroupRoot:               c.CgroupRoot,
		FailCgroupV1:             ptr.To(false),
		PodLogsDir:               filepath.Join(c.Dir, "persist", "pod-logs"),
		VolumePluginDir:          filepath.Join(root, "volume-plugins"),
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(root, "config.yaml")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		return nil, err
	}
	return []string{bin,
		"--bootstrap-kubeconfig=" + filepath.Join(etc, "bootstrap-kubelet.conf"),
		"--kubeconfig=" + filepath.Join(etc, "kubelet.conf"),
		"--config=" + cfgPath,
		"--root-dir=" + root,
		"--cert-dir=" + filepath.Join(root, "pki"),
		"--hostname-override=" + c.NodeName,
		"--node-ip=" + c.IP,
	}, nil
}

// readyWatch reports when a node is first seen Ready, from a watch opened
// before the node's kubelet starts (a poll would add its period to every
// join time).
type readyWatch struct {
	done chan struct{}
	at   time.Time
	err  error
}

func watchNodeReady(ctx context.Context, node string) (*readyWatch, error) {
	w, err := env.cp.Client().CoreV1().Nodes().Watch(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", node).String(),
	})
	if err != nil {
		return nil, err
	}
	rw := &readyWatch{done: make(chan struct{})}
	go func() {
		defer close(rw.done)
		defer w.Stop()
		for ev := range w.ResultChan() {
			if ev.Type != watch.Added && ev.Type != watch.Modified {
				continue
			}
			if n, ok := ev.Object.(*corev1.Node); ok && isReady(n) {
				rw.at = time.Now()
				return
			}
		}
		rw.err = fmt.Errorf("watch of node %s ended before it was Ready: %v", node, ctx.Err())
	}()
	return rw, nil
}

// wait returns the time the node was first seen Ready.
func (rw *readyWatch) wait() (time.Time, error) {
	<-rw.done
	return rw.at, rw.err
}
