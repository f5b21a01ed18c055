package agent

import (
	"cmp"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/lf-edge/evelet/bootstrap/intent"
	kubeletshim "github.com/lf-edge/evelet/kubelet-shim"
	"github.com/lf-edge/evelet/kubeproxy"
)

// KubeProxyConfig turns on Services on the device: the agent runs the
// vendored kube-proxy (`evelet kube-proxy`, nftables mode) next to the
// kubelet, and removes its rules when the node leaves (docs/services.md).
type KubeProxyConfig struct {
	// Enabled is the --kube-proxy flag: the default when the owner's
	// evelet.kube-proxy config item is not set (kubeProxyEnabled).
	Enabled bool
	// HealthzBindAddress, MetricsBindAddress: kube-proxy's ("": loopback,
	// kubeproxy.Options).
	HealthzBindAddress, MetricsBindAddress string
}

// serviceProxy is a running kube-proxy (a kubeletshim.Supervisor).
type serviceProxy interface {
	Run(ctx context.Context) error
}

// kubeProxyKubeconfig is how kube-proxy reaches the apiserver: the node's
// own identity, which the cluster admin lets read what kube-proxy reads
// (deploy/evelet-kube-proxy-rbac.yaml), through the local API cache while
// it serves, so Services survive a reboot offline.
func (a *Agent) kubeProxyKubeconfig() string {
	return cmp.Or(a.apiCacheKubeconfig("kube-proxy"), a.cfg.Credentials().KubeconfigPath())
}

// apiCacheWait bounds how long kube-proxy waits for the local API cache
// before it reads the apiserver directly.
const apiCacheWait = 10 * time.Second

// kubeProxyEnabled: the owner's evelet.kube-proxy config item when set
// (a refused value is reported by publishConfigErrors), else the flag.
// Read when the node joins or the agent starts, as the pod network's mode.
func (a *Agent) kubeProxyEnabled() bool {
	on, _ := kubeproxy.EnabledFromConfigItems(a.configItems(), a.cfg.KubeProxy.Enabled)
	return on
}

func (a *Agent) kubeProxyDir() string { return filepath.Join(a.cfg.RunDir, "kube-proxy") }

// startKubeProxy runs kube-proxy for j until ctx ends; the returned func
// waits for it to stop. Off, or when it cannot be set up, it logs and the
// node runs without Services.
func (a *Agent) startKubeProxy(ctx context.Context, j *intent.Join) (wait func()) {
	if !a.kubeProxyEnabled() {
		return func() {}
	}
	a.kubeProxyRan.Store(true)
	log := a.log.WithFields(logrus.Fields{"node": j.NodeName, "component": "kube-proxy"})
	done := make(chan struct{})
	go func() {
		defer close(done)
		// With a bootstrap token the kubelet writes the node's kubeconfig
		// once its CSR is approved; kube-proxy starts when it is there,
		// reading through the local API cache (so Services survive a
		// reboot offline) once that serves.
		if err := waitForFile(ctx, a.cfg.Credentials().KubeconfigPath()); err != nil {
			return
		}
		a.waitAPICacheKubeconfig(ctx, "kube-proxy", apiCacheWait)
		p, err := a.kubeProxy(j, log)
		if err != nil {
			log.WithError(err).Error("kube-proxy not started: no Services on this node")
			return
		}
		p.Run(ctx)
	}()
	return func() { <-done }
}

// kubeProxy writes kube-proxy's configuration and returns its supervisor.
func (a *Agent) kubeProxy(j *intent.Join, log *logrus.Entry) (serviceProxy, error) {
	dir := a.kubeProxyDir()
	path, err := kubeproxy.PrepareBinDir(filepath.Join(dir, "bin"))
	if err != nil {
		return nil, err
	}
	opts := &kubeproxy.Options{
		NodeName: j.NodeName, Kubeconfig: a.kubeProxyKubeconfig(), ConfigFile: filepath.Join(dir, "config.yaml"),
		HealthzBindAddress: a.cfg.KubeProxy.HealthzBindAddress, MetricsBindAddress: a.cfg.KubeProxy.MetricsBindAddress,
	}
	if err := opts.WriteConfig(); err != nil {
		return nil, err
	}
	return &kubeletshim.Supervisor{
		Name: "kube-proxy",
		Log:  log,
		Command: func() *exec.Cmd {
			cmd := a.roleCommand("kube-proxy", opts.Args()...)
			cmd.Env = []string{"PATH=" + path}
			cmd.Stdout, cmd.Stderr = a.cfg.KubeletLog, a.cfg.KubeletLog
			return cmd
		},
	}, nil
}

// removeServiceRules deletes kube-proxy's tables when the node leaves (the
// kube-proxy process has stopped with the kubelet by then).
func (a *Agent) removeServiceRules(ctx context.Context) error {
	if ran := a.kubeProxyRan.Swap(false); !ran && !a.kubeProxyEnabled() {
		return nil
	}
	return kubeproxy.RemoveRules(ctx)
}

func waitForFile(ctx context.Context, path string) error {
	return wait.PollUntilContextCancel(ctx, 500*time.Millisecond, true, func(context.Context) (bool, error) {
		_, err := os.Stat(path)
		return err == nil, nil
	})
}
