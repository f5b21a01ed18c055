package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/tests/containerd"
)

// recreateDuringOutage stops the apiserver, kills the pod's sandbox (its
// pause process) and waits until the kubelet has made a new sandbox whose
// container runs, with the apiserver still down. It then checks, inside
// the new container, that interface ifname has the MAC and address the
// pod asked for, and that both fallbacks were logged: the CRI shim's pod
// as last read (agent log) and evelet-cni's networks of the last sandbox
// (containerd's log). The
// apiserver is started again before it returns, and the same pod (UID) is
// Running and Ready.
func recreateDuringOutage(t *testing.T, ctx context.Context, d *device, ctrd *containerd.Containerd, pod *corev1.Pod, ifname, mac, addr string) {
	t.Helper()
	cs := env.cp.Client()
	conn, err := ctrd.DialCRI()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	uid := string(pod.UID)
	list := func() ([]*runtimeapi.PodSandbox, []*runtimeapi.Container, error) {
		sbs, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
			LabelSelector: map[string]string{"io.kubernetes.pod.uid": uid}}})
		if err != nil {
			return nil, nil, err
		}
		cts, err := rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
			LabelSelector: map[string]string{"io.kubernetes.pod.uid": uid}}})
		if err != nil {
			return nil, nil, err
		}
		return sbs.Items, cts.Containers, nil
	}
	sbs, _, err := list()
	if err != nil || len(sbs) != 1 {
		t.Fatalf("sandboxes of %s: %d (%v), want 1", pod.Name, len(sbs), err)
	}
	old := sbs[0].Id

	if err := env.cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	apiUp := false
	defer func() {
		if !apiUp {
			env.cp.StartAPIServer(context.Background())
		}
	}()
	if out, err := exec.Command("ctr", "--address", ctrd.Socket(), "-n", "k8s.io", "task", "kill", "-s", "SIGKILL", old).CombinedOutput(); err != nil {
		t.Fatalf("killing the sandbox %s: %v: %s", old, err, out)
	}
	var ctr string
	waitFor(t, 4*time.Minute, "a new sandbox of "+pod.Name+" with a running container, the apiserver down", func() (bool, error) {
		sbs, cts, err := list()
		if err != nil {
			return false, err
		}
		var seen []string
		for _, sb := range sbs {
			seen = append(seen, sb.Id[:12]+"="+sb.State.String())
			if sb.Id == old || sb.State != runtimeapi.PodSandboxState_SANDBOX_READY {
				continue
			}
			for _, c := range cts {
				if c.PodSandboxId == sb.Id && c.State == runtimeapi.ContainerState_CONTAINER_RUNNING {
					ctr = c.Id
					return true, nil
				}
			}
		}
		return false, fmt.Errorf("sandboxes %v; agent log: %s", seen, tail(d.log(), 5))
	})
	if _, err := cs.Discovery().ServerVersion(); err == nil {
		t.Fatal("the apiserver answers: the outage did not hold")
	}
	out, err := rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: ctr, Cmd: []string{"busybox", "ip", "-o", "addr", "show", ifname}, Timeout: 30})
	if err != nil || out.ExitCode != 0 {
		t.Fatalf("ip addr in the new container: %v %+v", err, out)
	}
	link, err := rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: ctr, Cmd: []string{"busybox", "ip", "-o", "link", "show", ifname}, Timeout: 30})
	if err != nil || link.ExitCode != 0 {
		t.Fatalf("ip link in the new container: %v %+v", err, link)
	}
	if !strings.Contains(string(out.Stdout), "inet "+addr) || !strings.Contains(string(link.Stdout), "link/ether "+mac) {
		t.Errorf("%s in the new sandbox: %s%s, want %s and %s", ifname, out.Stdout, link.Stdout, addr, mac)
	}
	// The shim judged the pod without the apiserver: from the local API
	// cache (its pod reads go through it; reads answered offline count as
	// hits), or, without the cache, as last read (its own fallback).
	if want := "apiserver unreachable: checking the pod as it was last read"; !strings.Contains(d.log(), want) {
		if st, err := d.status(); err != nil || st.APICache == nil || st.APICache.Hits == 0 {
			t.Errorf("the CRI shim judged the pod neither from the local API cache (status %+v, %v) nor as last read (%q in the agent's log)", st.APICache, err, want)
		}
	}
	// evelet-cni's stderr reaches containerd's log (libcni passes it on).
	if b, _ := os.ReadFile(ctrd.LogPath()); !strings.Contains(string(b), "apiserver unreachable: attaching the networks of the pod's last sandbox") {
		t.Errorf("containerd's log (evelet-cni's stderr) lacks the fallback warning")
	}

	if err := env.cp.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	apiUp = true
	waitFor(t, 3*time.Minute, pod.Name+" Running and Ready again, same UID", func() (bool, error) {
		p, err := cs.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		ready := false
		for _, c := range p.Status.Conditions {
			ready = ready || (c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue)
		}
		return p.UID == pod.UID && p.Status.Phase == corev1.PodRunning && ready, fmt.Errorf("uid %s phase %s conditions %v", p.UID, p.Status.Phase, p.Status.Conditions)
	})
}
