package criconformance

import (
	"context"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"
	"k8s.io/klog/v2"

	"github.com/lf-edge/evelet/cri"
	crictrd "github.com/lf-edge/evelet/cri/containerd"
	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/policy"
	"github.com/lf-edge/evelet/tests/containerd"
)

// env is shared by every test and benchmark of the package: one containerd,
// and evelet's CRI server in front of it, in this process.
var env struct {
	skipWhy string

	dir         string // everything the tests write
	kubeletRoot string // the policy's KubeletRootDir
	podLogs     string // the policy's PodLogsDir
	busyboxTar  string
	base        policy.Policy // the policy the server starts with

	ctrd *containerd.Containerd
	srv  *cri.Server
	sock string // evelet's socket
	reg  *prometheus.Registry

	// The kubelet's own CRI client, to evelet.
	rs internalapi.RuntimeService
	is internalapi.ImageManagerService
	// Plain gRPC clients to evelet and to containerd directly.
	shim, direct     runtimeapi.RuntimeServiceClient
	shimIm, directIm runtimeapi.ImageServiceClient
}

const (
	bridgeName = "evcriconf0"
	podCIDR    = "10.245.31.0/24"
	namespace  = "criconf"
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(func() int {
		stop, err := setup()
		if err != nil {
			fmt.Fprintln(os.Stderr, "criconformance setup:", err)
			return 1
		}
		defer stop()
		return m.Run()
	}())
}

// skipReason says why this machine cannot run containers, or "".
func skipReason() string {
	if os.Geteuid() != 0 {
		return "needs root to run containerd, runc and CNI"
	}
	for _, b := range []string{"containerd", "ctr", "containerd-shim-runc-v2", "runc"} {
		if _, err := exec.LookPath(b); err != nil {
			if _, err2 := os.Stat(filepath.Join("/usr/sbin", b)); err2 != nil {
				return fmt.Sprintf("needs %s (apt-get install containerd runc): %v", b, err)
			}
		}
	}
	for _, p := range []string{"bridge", "host-local", "portmap", "loopback"} {
		if _, err := os.Stat(filepath.Join("/usr/lib/cni", p)); err != nil {
			return fmt.Sprintf("needs the CNI plugins in /usr/lib/cni (apt-get install containernetworking-plugins): %v", err)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		return "needs a static busybox at /bin/busybox (apt-get install busybox-static)"
	}
	return ""
}

func setup() (stop func(), err error) {
	if env.skipWhy = skipReason(); env.skipWhy != "" {
		return func() {}, nil
	}
	var undo []func()
	stop = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	if env.dir, err = os.MkdirTemp("", "evelet-criconf-"); err != nil {
		return nil, err
	}
	undo = append(undo, func() { os.RemoveAll(env.dir) })
	t0 := time.Now()
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	imgDir := filepath.Join(env.dir, "images")
	pauseTar, err := images.BuildPause(ctx, goBin, "", imgDir)
	if err != nil {
		return nil, err
	}
	if env.busyboxTar, err = images.BuildBusybox("/bin/busybox", imgDir); err != nil {
		return nil, err
	}
	// Runs after containerd stopped and removed the pods: the kubelet
	// would remove its pod cgroups, so we remove ours.
	undo = append(undo, removeCgroups)
	env.ctrd, err = containerd.Start(ctx, containerd.Options{
		Dir: filepath.Join(env.dir, "containerd"), PodCIDR: podCIDR, BridgeName: bridgeName,
		RestrictOOMScoreAdj: true, // test machines lack CAP_SYS_RESOURCE
	})
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() {
		if err := env.ctrd.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "criconformance: stopping containerd:", err)
		}
	})
	if err := env.ctrd.ImportImages(ctx, pauseTar, env.busyboxTar); err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "criconformance: containerd ready with images in %v\n", time.Since(t0).Round(time.Millisecond))

	backend, err := crictrd.Dial(ctx, env.ctrd.Endpoint())
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { backend.Close() })

	env.kubeletRoot = filepath.Join(env.dir, "kubelet")
	env.podLogs = filepath.Join(env.dir, "pod-logs")
	for _, d := range []string{env.kubeletRoot, env.podLogs} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, err
		}
	}
	env.base = policy.Default()
	env.base.KubeletRootDir, env.base.PodLogsDir = env.kubeletRoot, env.podLogs
	env.reg = prometheus.NewRegistry()
	l := logrus.New()
	l.SetOutput(io.Discard)
	if os.Getenv("CRICONF_DEBUG") != "" {
		l.SetOutput(os.Stderr)
		l.SetLevel(logrus.DebugLevel)
	}
	env.sock = filepath.Join(env.dir, "run", "cri.sock")
	if len(env.sock) > 100 {
		env.sock = filepath.Join(os.TempDir(), fmt.Sprintf("evelet-criconf-%d.sock", os.Getpid()))
	}
	env.srv, err = cri.NewServer(cri.Config{
		Socket: env.sock, Backend: backend, Log: logrus.NewEntry(l), Policy: &env.base, Metrics: env.reg,
	})
	if err != nil {
		return nil, err
	}
	sctx, scancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- env.srv.Serve(sctx) }()
	undo = append(undo, func() {
		scancel()
		if err := <-served; err != nil {
			fmt.Fprintln(os.Stderr, "criconformance: Serve:", err)
		}
	})
	if err := waitSocket(env.sock, served); err != nil {
		return nil, err
	}

	// The kubelet's CRI client logs every error answer, which these tests
	// provoke on purpose.
	logger := logr.Discard()
	if os.Getenv("CRICONF_DEBUG") != "" {
		logger = klog.Background()
	}
	if env.rs, err = remote.NewRemoteRuntimeService("unix://"+env.sock, 2*time.Minute, nil, &logger); err != nil {
		return nil, err
	}
	if env.is, err = remote.NewRemoteImageService("unix://"+env.sock, 2*time.Minute, nil, &logger); err != nil {
		return nil, err
	}
	shimConn, err := dial(env.sock)
	if err != nil {
		return nil, err
	}
	directConn, err := dial(env.ctrd.Socket())
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { shimConn.Close(); directConn.Close() })
	env.shim, env.shimIm = runtimeapi.NewRuntimeServiceClient(shimConn), runtimeapi.NewImageServiceClient(shimConn)
	env.direct, env.directIm = runtimeapi.NewRuntimeServiceClient(directConn), runtimeapi.NewImageServiceClient(directConn)
	return stop, nil
}

func waitSocket(sock string, served chan error) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-served:
			return fmt.Errorf("Serve returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("evelet never answered on %s: %v", sock, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// removeCgroups removes the (empty) pod cgroups under CgroupRoot, deepest
// first, in every hierarchy.
func removeCgroups() {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*" + CgroupRoot())
	if more, _ := filepath.Glob("/sys/fs/cgroup" + CgroupRoot()); len(more) > 0 {
		roots = append(roots, more...)
	}
	for _, root := range roots {
		var dirs []string
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := syscall.Rmdir(dirs[i]); err != nil {
				fmt.Fprintf(os.Stderr, "criconformance: rmdir %s: %v\n", dirs[i], err)
			}
		}
	}
}

// dial connects like the kubelet: plain gRPC on a unix socket, 16 MiB messages.
func dial(sock string) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)))
}

// needEnv skips when this machine cannot run containers.
func needEnv(tb testing.TB) {
	tb.Helper()
	if env.skipWhy != "" {
		tb.Skip(env.skipWhy)
	}
}

func ctx(tb testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	tb.Cleanup(cancel)
	return c
}
