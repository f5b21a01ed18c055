// Command demo brings up evelet's embedded default: a real local control
// plane (etcd, kube-apiserver, controller-manager, scheduler on loopback), a
// real containerd standing in for EVE's user containerd, and one simulated
// device running `evelet agent`, which joins by bootstrap token. A busybox
// Deployment then runs on the device.
//
//	demo up          start everything in the background, wait for a Running pod
//	demo down        stop everything and remove the demo's state (also after a crash)
//	demo with CMD... run CMD while a demo is up, then check the demo is still
//	                 healthy (`make test` runs the tests this way: issue 12)
//
// `up` re-executes itself as `demo serve`, a detached process that owns the
// harness and tears it down on SIGTERM; that is what `down` sends.
//
// The demo's device has ports, a bridge, a CNI network, a containerd and a
// kubelet cgroup root of its own (settings.go), so it coexists with the e2e
// tests' devices on one host.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/internal/atomicfile"
	"github.com/lf-edge/evelet/tests/containerd"
	"github.com/lf-edge/evelet/tests/controlplane"
	"github.com/lf-edge/evelet/tests/evesim"
	"github.com/lf-edge/evelet/tests/internal/cgroups"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

// step is one progress line of the serve process, shown by `up`.
type step struct {
	At  time.Time `json:"at"`
	Msg string    `json:"msg"`
}

type state struct {
	PID        int    `json:"pid"`
	Kubeconfig string `json:"kubeconfig"`
	Kubectl    string `json:"kubectl"`
	Ready      bool   `json:"ready"`
	Error      string `json:"error,omitempty"`
	Steps      []step `json:"steps,omitempty"`
}

func main() {
	root, err := controlplane.ModuleRoot()
	if err != nil {
		fatal(err)
	}
	dir := filepath.Join(root, "_output", "demo")
	if len(os.Args) < 2 {
		fatal(errors.New("usage: demo up|down|with CMD..."))
	}
	switch os.Args[1] {
	case "up":
		err = up(root, dir)
	case "serve":
		err = serve(root, dir)
	case "down":
		err = down(dir)
	case "with":
		var code int
		code, err = with(root, dir, os.Args[2:])
		if err == nil {
			os.Exit(code)
		}
	default:
		err = fmt.Errorf("unknown command %q (up|down|with)", os.Args[1])
	}
	if err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "demo:", err)
	os.Exit(1)
}

func statePath(dir string) string { return filepath.Join(dir, "state.json") }

func readState(dir string) (*state, error) {
	b, err := os.ReadFile(statePath(dir))
	if err != nil {
		return nil, err
	}
	var s state
	return &s, json.Unmarshal(b, &s)
}

func writeState(dir string, s state) {
	b, _ := json.MarshalIndent(s, "", "  ")
	atomicfile.WriteFile(statePath(dir), b, 0o644)
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

func up(root, dir string) error {
	if err := newPreflight(dir).check(); err != nil {
		return err
	}
	// Whatever is left is files of a demo that stopped cleanly or failed
	// to start (preflight found no process, mount or bridge of it).
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(dir, "demo.log"))
	if err != nil {
		return err
	}
	self, _ := os.Executable()
	cmd := exec.Command(self, "serve")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait() // reap it if it exits early; alive() then sees it gone
	printStep(os.Stdout, time.Now(), "starting the demo in the background (log: "+logf.Name()+")")
	shown := 0
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		s, err := readState(dir)
		if err != nil {
			continue
		}
		for ; shown < len(s.Steps); shown++ {
			printStep(os.Stdout, s.Steps[shown].At, s.Steps[shown].Msg)
		}
		if s.Error != "" {
			return fmt.Errorf("%s\n(see %s; %s cleans up)", s.Error, logf.Name(), fix)
		}
		if s.Ready {
			out, _ := exec.Command(s.Kubectl, "--kubeconfig", s.Kubeconfig, "get", "nodes,pods", "-o", "wide").CombinedOutput()
			fmt.Printf("\n%s\n", out)
			fmt.Printf("The device %q is a Ready node and its pod is Running.\n\n", nodeName)
			fmt.Printf("  kubeconfig: %s\n", s.Kubeconfig)
			fmt.Printf("  try:        %s --kubeconfig %s get pods -o wide\n", s.Kubectl, s.Kubeconfig)
			fmt.Printf("  device:     %s status --run-dir %s\n", filepath.Join(root, "bin", "evelet"), filepath.Join(dir, "device", "run"))
			fmt.Printf("  metrics:    curl http://127.0.0.1:%d/metrics\n", metricsPort)
			fmt.Printf("  stop it:    make demo-down\n")
			fmt.Printf("The demo uses its own ports (%d, %d, %d), bridge %s and cgroup %s: `make test` can run next to it.\n",
				kubeletPort, kubeletHealthzPort, metricsPort, bridgeName, cgroupRoot)
			return nil
		}
		if !alive(cmd.Process.Pid) {
			return fmt.Errorf("the demo process exited; see %s", logf.Name())
		}
	}
	return fmt.Errorf("demo not ready in 10 minutes; see %s (%s stops it)", logf.Name(), fix)
}

// down stops a running demo and removes what a crashed one left behind:
// processes naming the demo directory, pods in the demo's cgroup root,
// containerd's runc state, CNI attachments, mounts, the bridge.
func down(dir string) error {
	pf := newPreflight(dir)
	if held, o := pf.lock.held(); held {
		if o.Dir != dir {
			return fmt.Errorf("the running demo (pid %d) was started in %s: run %s there", o.PID, o.Dir, fix)
		}
		syscall.Kill(o.PID, syscall.SIGTERM)
		// The lock goes with the serve process, after its own teardown.
		if err := waitUntil(context.Background(), 2*time.Minute, func() bool { held, _ := pf.lock.held(); return !held }); err != nil {
			return fmt.Errorf("demo process %d did not stop within 2 minutes of SIGTERM", o.PID)
		}
	}
	_, statErr := os.Stat(dir)
	removed, err := pf.clearLeftovers()
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	switch {
	case statErr == nil:
		fmt.Println("demo: stopped; removed", dir)
	case len(removed) > 0:
		fmt.Printf("demo: removed what a previous demo left: %s\n", strings.Join(removed, "; "))
	default:
		fmt.Println("demo: no demo to stop")
	}
	return nil
}

// ctrdOptions is the demo's containerd: everything under dir/containerd,
// and a network of its own.
func ctrdOptions(dir string) containerd.Options {
	return containerd.Options{
		Dir: filepath.Join(dir, "containerd"), SandboxImage: images.PauseRef,
		PodCIDR: podCIDR, BridgeName: bridgeName, NetworkName: networkName,
		// This machine kind lacks CAP_SYS_RESOURCE (environment.md).
		RestrictOOMScoreAdj: true,
	}
}

// serve owns every process of the demo and stops them on SIGTERM.
func serve(root, dir string) error {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	st := state{PID: os.Getpid()}
	// Held until this process exits: it marks the host's demo resources
	// as in use (lock.go).
	lock := newHostLock()
	if err := lock.take(dir); err != nil {
		st.Error = "another demo took the machine's demo lock first"
		if !errors.Is(err, errHeld) {
			st.Error = err.Error()
		}
		writeState(dir, st)
		return errors.New(st.Error)
	}
	defer lock.unlock() // also keeps the lock's file from being collected
	progress := func(msg string) {
		st.Steps = append(st.Steps, step{At: time.Now(), Msg: msg})
		writeState(dir, st)
		fmt.Fprintln(os.Stderr, "demo:", msg)
	}
	writeState(dir, st)
	stops := []func(){}
	defer func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}()
	fail := func(err error) error {
		st.Error = err.Error()
		writeState(dir, st)
		return err
	}

	progress("starting the control plane (etcd, kube-apiserver, controller-manager, scheduler)")
	cp, err := controlplane.Start(ctx, controlplane.Options{Dir: filepath.Join(dir, "cp"), BinDir: os.Getenv("KUBE_BIN_DIR"), Log: os.Stderr})
	if err != nil {
		return fail(fmt.Errorf("control plane: %w", err))
	}
	stops = append(stops, func() { cp.Stop() })
	st.Kubeconfig = cp.AdminKubeconfig()
	st.Kubectl = filepath.Join(cp.BinDir(), "kubectl")

	progress("starting containerd (bridge " + bridgeName + ", pods in " + podCIDR + ")")
	imgDir := filepath.Join(root, "_output", "images")
	pause, err := images.BuildPause(ctx, "", root, imgDir)
	if err != nil {
		return fail(err)
	}
	busybox, err := images.BuildBusybox("/bin/busybox", imgDir)
	if err != nil {
		return fail(err)
	}
	if err := cgroups.MakeRoot(cgroupRoot); err != nil {
		return fail(err)
	}
	// Runs after containerd's Stop (stops run in reverse): no pod is left.
	stops = append(stops, func() { removeCgroupRoot(cgroupRoot) })
	co := ctrdOptions(dir)
	co.Log = os.Stderr
	ctrd, err := containerd.Start(ctx, co)
	if err != nil {
		return fail(fmt.Errorf("containerd: %w", err))
	}
	stops = append(stops, func() { ctrd.Stop() })
	if err := ctrd.ImportImages(ctx, pause, busybox); err != nil {
		return fail(err)
	}

	token, err := cp.CreateBootstrapToken(ctx, 24*time.Hour)
	if err != nil {
		return fail(err)
	}
	// The device gets its join material the EVE way: a simulated zedagent
	// publishes the cluster intent and the encrypted token (K10 form).
	devDir := filepath.Join(dir, "device")
	sim, err := evesim.New(filepath.Join(devDir, "eve"), nodeName)
	if err != nil {
		return fail(err)
	}
	k10, err := cp.K10Token(ctx, token)
	if err != nil {
		return fail(err)
	}
	if err := sim.SetCluster(evesim.Cluster{
		Name: "demo", ID: "5c1ba3b0-7a8e-4c5e-9a57-2f6d3b3e0d42", JoinServerIP: "127.0.0.1", ClusterIPPrefix: "127.0.0.1/8", Token: k10,
		// The demo apiserver listens on a free port, not 6443.
		ConfigItems: map[string]string{"evelet.apiserver-url": cp.URL()},
	}); err != nil {
		return fail(err)
	}
	progress("device " + nodeName + ": evelet agent joins with the bootstrap token")
	alog, err := os.Create(filepath.Join(devDir, "agent.log"))
	if err != nil {
		return fail(err)
	}
	ag := exec.Command(filepath.Join(root, "bin", "evelet"), "agent",
		"--state-dir="+filepath.Join(devDir, "persist"), "--run-dir="+filepath.Join(devDir, "run"),
		"--eve-run="+sim.Root.Run, "--eve-persist="+sim.Root.Persist,
		"--containerd="+ctrd.Endpoint(),
		"--kubelet-port="+strconv.Itoa(kubeletPort), "--kubelet-healthz-port="+strconv.Itoa(kubeletHealthzPort),
		"--kubelet-cgroup-root="+cgroupRoot, "--metrics-addr=127.0.0.1:"+strconv.Itoa(metricsPort),
		// The demo device shares the host's network namespace.
		"--node-dns=false")
	ag.Stdout, ag.Stderr = alog, alog
	ag.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := ag.Start(); err != nil {
		return fail(err)
	}
	agDone := make(chan struct{})
	go func() { ag.Wait(); close(agDone) }()
	stops = append(stops, func() {
		ag.Process.Signal(syscall.SIGTERM)
		select {
		case <-agDone:
		case <-time.After(40 * time.Second):
			syscall.Kill(-ag.Process.Pid, syscall.SIGKILL)
		}
		// The pods the kubelet ran are removed by containerd's Stop.
		unmount(devDir)
	})

	cs := cp.Client()
	if err := waitUntil(ctx, 5*time.Minute, func() bool { return nodeReady(ctx, cs) }); err != nil {
		return fail(fmt.Errorf("node %s not Ready: %w (agent log: %s)", nodeName, err, alog.Name()))
	}
	progress("node " + nodeName + " is Ready; starting Deployment hello-eve (busybox httpd)")
	labels := map[string]string{"app": "hello-eve"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "hello-eve", Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "hello", Image: images.BusyboxRef, ImagePullPolicy: corev1.PullNever,
					Command: []string{"sh", "-c", "echo hello from an EVE device; exec httpd -f -p 8080"},
				}}},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		return fail(err)
	}
	if err := waitUntil(ctx, 3*time.Minute, func() bool { _, err := runningPod(ctx, cs); return err == nil }); err != nil {
		return fail(fmt.Errorf("demo pod not Running: %w", err))
	}
	progress("pod of hello-eve is Running")
	st.Ready = true
	writeState(dir, st)
	select {
	case <-ctx.Done():
	case <-agDone:
		fmt.Fprintln(os.Stderr, "demo: the agent exited; stopping")
	}
	return nil
}

func nodeReady(ctx context.Context, cs kubernetes.Interface) bool {
	n, err := cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		return false
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// runningPod returns the demo's one pod if it is Running on the device.
func runningPod(ctx context.Context, cs kubernetes.Interface) (*corev1.Pod, error) {
	l, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=hello-eve"})
	if err != nil {
		return nil, err
	}
	if len(l.Items) != 1 {
		return nil, fmt.Errorf("%d pods of hello-eve, want 1", len(l.Items))
	}
	p := &l.Items[0]
	if p.Status.Phase != corev1.PodRunning || p.Spec.NodeName != nodeName {
		return nil, fmt.Errorf("pod %s is %s on %q", p.Name, p.Status.Phase, p.Spec.NodeName)
	}
	return p, nil
}

// with runs argv while a demo is up and then checks that the demo's node is
// still Ready and its very pod still Running without a restart: the proof
// that the command (the test suite) and the demo did not collide. A demo
// already running is used and left running; otherwise one is started and
// stopped. The exit code is argv's, or 1 if the demo check failed.
func with(root, dir string, argv []string) (int, error) {
	if len(argv) > 0 && argv[0] == "--" {
		argv = argv[1:]
	}
	if len(argv) == 0 {
		return 0, errors.New("usage: demo with CMD [ARG...]")
	}
	if os.Getuid() != 0 {
		// The demo needs root as the e2e tests do (they skip then): run
		// the command alone rather than fail before it.
		fmt.Println("demo: not root: running without a demo next to it")
		return run(argv)
	}
	own := false
	// A demo running from another clone of evelet is as good: its host
	// resources are the same ones.
	if held, o := newHostLock().held(); held && o.Dir != "" {
		dir = o.Dir
	}
	if s, err := readState(dir); err != nil || !alive(s.PID) || !s.Ready {
		if err := up(root, dir); err != nil {
			return 0, err
		}
		own = true
	} else {
		fmt.Printf("demo: using the demo already running (pid %d, %s)\n", s.PID, dir)
	}
	cs, err := demoClient(dir)
	if err != nil {
		return 0, err
	}
	ctx := context.Background()
	before, err := runningPod(ctx, cs)
	if err != nil {
		return 0, fmt.Errorf("the demo is not healthy before the run: %w", err)
	}
	code, err := run(argv)
	if err != nil {
		return 0, err
	}
	checkErr := checkSame(ctx, cs, before)
	if checkErr != nil {
		fmt.Fprintf(os.Stderr, "demo: FAIL: the demo did not survive the run next to it: %v (log: %s)\n", checkErr, filepath.Join(dir, "demo.log"))
		if code == 0 {
			code = 1
		}
	} else {
		fmt.Printf("demo: after the run, node %s is still Ready and pod %s still Running (restarts: %d)\n",
			nodeName, before.Name, restarts(before))
	}
	if own {
		if err := down(dir); err != nil {
			fmt.Fprintln(os.Stderr, "demo:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code, nil
}

// run runs argv with our stdio and returns its exit code.
func run(argv []string) (int, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	return 0, err
}

func demoClient(dir string) (kubernetes.Interface, error) {
	s, err := readState(dir)
	if err != nil {
		return nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// checkSame: node Ready, the same pod (UID) Running, no container restart.
func checkSame(ctx context.Context, cs kubernetes.Interface, before *corev1.Pod) error {
	if !nodeReady(ctx, cs) {
		return fmt.Errorf("node %s is not Ready", nodeName)
	}
	p, err := runningPod(ctx, cs)
	if err != nil {
		return err
	}
	if p.UID != before.UID {
		return fmt.Errorf("pod %s was replaced by %s", before.Name, p.Name)
	}
	if r := restarts(p); r != restarts(before) {
		return fmt.Errorf("pod %s restarted (%d restarts, %d before)", p.Name, r, restarts(before))
	}
	return nil
}

func restarts(p *corev1.Pod) int32 {
	var n int32
	for _, c := range p.Status.ContainerStatuses {
		n += c.RestartCount
	}
	return n
}

func waitUntil(ctx context.Context, d time.Duration, f func() bool) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if f() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("timed out after %v", d)
}

func unmount(dir string) {
	mounts, _ := containerd.Mounts(dir)
	for _, m := range mounts {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
}
