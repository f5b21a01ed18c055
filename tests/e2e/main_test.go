// Package e2e runs evelet against real parts: a kube-apiserver, controller-
// manager, scheduler and etcd built from the pinned k8s.io/kubernetes module,
// a real containerd with runc and the CNI bridge plugin, and the evelet
// binary itself (agent + vendored kubelet + CRI shim).
package e2e

import (
	"context"
	"fmt"
	"github.com/lf-edge/evelet/cni/eveni"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/internal/nodebin"
	"github.com/lf-edge/evelet/tests/containerd"
	"github.com/lf-edge/evelet/tests/controlplane"
	"github.com/lf-edge/evelet/tests/devnet"
)

// env is shared by every test in the package: one control plane, one
// containerd. Devices (agents) are per test and never overlap, because two
// kubelets on one host would fight over cgroups and ports.
var env struct {
	root    string // module root
	evelet  string // evelet binary
	cp      *controlplane.ControlPlane
	ctrd    *containerd.Containerd
	work    string // the run's directory under /tmp
	skipWhy string
	// devnet is the bridge the control plane listens on, so devices in
	// network namespaces of their own (tests/devnet) reach it; images are
	// the image tarballs every device imports.
	devnet *devnet.Net
	images []string
}

func TestMain(m *testing.M) {
	code := func() int {
		// teardown also undoes a setup that failed half way (the devnet
		// bridge, a started control plane).
		defer teardown()
		if err := setup(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e setup:", err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

func setup() error {
	if os.Getuid() != 0 {
		env.skipWhy = "e2e tests need root (network namespaces, containerd, kubelet cgroups); run `sudo make test`"
		return nil
	}
	for _, bin := range []string{"containerd", "runc", "ctr"} {
		if _, err := exec.LookPath(bin); err != nil {
			env.skipWhy = bin + " not installed; `make test` installs it (hack/install-prereqs.sh)"
			return nil
		}
	}
	var err error
	if env.root, err = controlplane.ModuleRoot(); err != nil {
		return err
	}
	env.evelet = os.Getenv("EVELET_BIN")
	if env.evelet == "" {
		// Outside make: build it the way `make build` does.
		cmd := exec.Command("make", "-C", env.root, "build")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("make build: %w", err)
		}
		env.evelet = filepath.Join(env.root, "bin", "evelet")
	}
	// The agent runs the kubelet, kube-proxy and DNS from binaries beside it.
	for _, r := range nodebin.Roles {
		if _, err := os.Stat(nodebin.Path(env.evelet, r)); err != nil {
			return fmt.Errorf("%w: `make build` puts %s next to %s", err, nodebin.Name(r), env.evelet)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	work, err := os.MkdirTemp("/tmp", "evelet-e2e-")
	if err != nil {
		return err
	}
	env.work = work
	if env.devnet, err = devnet.NewNet(devnet.NetOptions{}); err != nil {
		return err
	}
	t0 := time.Now()
	env.cp, err = controlplane.Start(ctx, controlplane.Options{
		Dir: filepath.Join(work, "cp"), BinDir: os.Getenv("KUBE_BIN_DIR"),
		NodeMonitorGracePeriod: 20 * time.Second,
		// Node IPAM, as kubeadm with networking.podSubnet: every Node gets
		// a podCIDR, for devices in evelet.pod-network=podcidr mode
		// (TestServices). The last --allocate-node-cidrs wins.
		ClusterCIDR: podClusterCIDR,
		ExtraArgs:   map[string][]string{controlplane.ControllerManager: {"--allocate-node-cidrs=true"}},
		// Reachable from the host and from devnet's namespaces alike.
		AdvertiseAddress: env.devnet.HostIP(), BindAddress: env.devnet.HostIP(),
	})
	if err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	fmt.Fprintf(os.Stderr, "e2e: control plane ready at %s in %v\n", env.cp.URL(), time.Since(t0).Round(time.Millisecond))

	imgDir := filepath.Join(env.root, "_output", "images")
	pause, err := images.BuildPause(ctx, "", env.root, imgDir)
	if err != nil {
		return fmt.Errorf("pause image: %w", err)
	}
	busybox, err := images.BuildBusybox("/bin/busybox", imgDir)
	if err != nil {
		return fmt.Errorf("busybox image: %w", err)
	}
	env.ctrd, err = containerd.Start(ctx, containerd.Options{
		Dir: filepath.Join(work, "containerd"), SandboxImage: images.PauseRef,
		PodCIDR: "10.244.7.0/24", BridgeName: "evelet-e2e0", RestrictOOMScoreAdj: true,
	})
	if err != nil {
		return fmt.Errorf("containerd: %w", err)
	}
	env.images = []string{pause, busybox}
	if err := env.ctrd.ImportImages(ctx, pause, busybox); err != nil {
		return fmt.Errorf("import images: %w", err)
	}
	return nil
}

func teardown() {
	if env.ctrd != nil {
		env.ctrd.Stop()
	}
	if env.cp != nil {
		env.cp.Stop()
	}
	if env.devnet != nil {
		env.devnet.Close()
	}
	// eve-ni's table, once every pod is gone: its tests end their devices
	// without a leave, which is where the agent removes it.
	if err := eveni.RemoveGuardTableIfEmpty(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: eve-ni's nftables table:", err)
	}
	// The run's directory (control plane, containerd) goes too, unless
	// something is still mounted in it: then it is kept and named.
	if env.work != "" {
		if ms, err := containerd.Mounts(env.work); err != nil || len(ms) > 0 {
			fmt.Fprintf(os.Stderr, "e2e: kept %s: mounts %v (%v)\n", env.work, ms, err)
		} else {
			os.RemoveAll(env.work)
		}
	}
}

// needEnv skips a test that needs the real parts when this machine truly
// cannot provide them.
func needEnv(t *testing.T) {
	t.Helper()
	if env.skipWhy != "" {
		t.Skip(env.skipWhy)
	}
}
