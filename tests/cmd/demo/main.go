// Command demo brings up evelet's embedded default: a real local control
// plane (etcd, kube-apiserver, controller-manager, scheduler on loopback), a
// real containerd standing in for EVE's user containerd, and one simulated
// device running `evelet agent`, which joins by bootstrap token. A busybox
// Deployment then runs on the device.
//
//	demo up     start everything in the background, wait for a Running pod
//	demo down   stop everything and remove the demo's state
//
// `up` re-executes itself as `demo serve`, a detached process that owns the
// harness and tears it down on SIGTERM; that is what `down` sends.
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
	"syscall"
	"time"

	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/internal/atomicfile"
	"github.com/lf-edge/evelet/tests/containerd"
	"github.com/lf-edge/evelet/tests/controlplane"
	"github.com/lf-edge/evelet/tests/evesim"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

const nodeName = "eve-demo-device"

type state struct {
	PID        int    `json:"pid"`
	Kubeconfig string `json:"kubeconfig"`
	Kubectl    string `json:"kubectl"`
	Ready      bool   `json:"ready"`
	Error      string `json:"error,omitempty"`
}

func main() {
	root, err := controlplane.ModuleRoot()
	if err != nil {
		fatal(err)
	}
	dir := filepath.Join(root, "_output", "demo")
	if len(os.Args) < 2 {
		fatal(errors.New("usage: demo up|down"))
	}
	switch os.Args[1] {
	case "up":
		err = up(root, dir)
	case "serve":
		err = serve(root, dir)
	case "down":
		err = down(dir)
	default:
		err = fmt.Errorf("unknown command %q (up|down)", os.Args[1])
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
	if s, err := readState(dir); err == nil && alive(s.PID) {
		return fmt.Errorf("the demo is already running (pid %d); `make demo-down` stops it", s.PID)
	}
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
	fmt.Printf("demo: starting a local control plane, containerd and one EVE device (log: %s)\n", logf.Name())
	deadline := time.Now().Add(25 * time.Minute)
	for time.Now().Before(deadline) {
		time.Sleep(time.Second)
		s, err := readState(dir)
		if err == nil && s.Error != "" {
			return fmt.Errorf("%s\n(see %s)", s.Error, logf.Name())
		}
		if err == nil && s.Ready {
			out, _ := exec.Command(s.Kubectl, "--kubeconfig", s.Kubeconfig, "get", "nodes,pods", "-o", "wide").CombinedOutput()
			fmt.Printf("\n%s\n", out)
			fmt.Printf("The device %q is a Ready node and its pod is Running.\n\n", nodeName)
			fmt.Printf("  kubeconfig: %s\n", s.Kubeconfig)
			fmt.Printf("  try:        %s --kubeconfig %s get pods -o wide\n", s.Kubectl, s.Kubeconfig)
			fmt.Printf("  device:     %s status --run-dir %s\n", filepath.Join(root, "bin", "evelet"), filepath.Join(dir, "device", "run"))
			fmt.Printf("  stop it:    make demo-down\n")
			return nil
		}
		if !alive(cmd.Process.Pid) {
			return fmt.Errorf("demo process exited; see %s", logf.Name())
		}
	}
	return fmt.Errorf("demo not ready in time; see %s", logf.Name())
}

func down(dir string) error {
	s, err := readState(dir)
	if err != nil {
		return fmt.Errorf("no demo state in %s: %w", dir, err)
	}
	if alive(s.PID) {
		syscall.Kill(s.PID, syscall.SIGTERM)
		for i := 0; i < 120 && alive(s.PID); i++ {
			time.Sleep(500 * time.Millisecond)
		}
		if alive(s.PID) {
			return fmt.Errorf("demo process %d did not stop", s.PID)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	fmt.Println("demo: stopped and removed", dir)
	return nil
}

// serve owns every process of the demo and stops them on SIGTERM.
func serve(root, dir string) error {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	st := state{PID: os.Getpid()}
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

	cp, err := controlplane.Start(ctx, controlplane.Options{Dir: filepath.Join(dir, "cp"), BinDir: os.Getenv("KUBE_BIN_DIR"), Log: os.Stderr})
	if err != nil {
		return fail(fmt.Errorf("control plane: %w", err))
	}
	stops = append(stops, func() { cp.Stop() })
	st.Kubeconfig = cp.AdminKubeconfig()
	st.Kubectl = filepath.Join(cp.BinDir(), "kubectl")

	imgDir := filepath.Join(root, "_output", "images")
	pause, err := images.BuildPause(ctx, "", root, imgDir)
	if err != nil {
		return fail(err)
	}
	busybox, err := images.BuildBusybox("/bin/busybox", imgDir)
	if err != nil {
		return fail(err)
	}
	ctrd, err := containerd.Start(ctx, containerd.Options{
		Dir: filepath.Join(dir, "containerd"), SandboxImage: images.PauseRef,
		PodCIDR: "10.244.9.0/24", BridgeName: "evelet-demo0",
		// This machine kind lacks CAP_SYS_RESOURCE (environment.md).
		RestrictOOMScoreAdj: true, Log: os.Stderr,
	})
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
		Name: "demo", ID: "5c1ba3b0-7a8e-4c5e-9a57-2f6d3b3e0d42", JoinServerIP: "127.0.0.1", Token: k10,
		// The demo apiserver listens on a free port, not 6443.
		ConfigItems: map[string]string{"evelet.apiserver-url": cp.URL()},
	}); err != nil {
		return fail(err)
	}
	alog, err := os.Create(filepath.Join(devDir, "agent.log"))
	if err != nil {
		return fail(err)
	}
	ag := exec.Command(filepath.Join(root, "bin", "evelet"), "agent",
		"--state-dir="+filepath.Join(devDir, "persist"), "--run-dir="+filepath.Join(devDir, "run"),
		"--eve-run="+sim.Root.Run, "--eve-persist="+sim.Root.Persist,
		"--containerd="+ctrd.Endpoint())
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
	if err := waitUntil(ctx, 5*time.Minute, func() bool {
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
	}); err != nil {
		return fail(fmt.Errorf("node %s not Ready: %w (agent log: %s)", nodeName, err, alog.Name()))
	}
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
	if err := waitUntil(ctx, 3*time.Minute, func() bool {
		l, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=hello-eve"})
		return err == nil && len(l.Items) == 1 && l.Items[0].Status.Phase == corev1.PodRunning
	}); err != nil {
		return fail(fmt.Errorf("demo pod not Running: %w", err))
	}
	st.Ready = true
	writeState(dir, st)
	fmt.Fprintln(os.Stderr, "demo: ready")
	select {
	case <-ctx.Done():
	case <-agDone:
		fmt.Fprintln(os.Stderr, "demo: the agent exited; stopping")
	}
	return nil
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
