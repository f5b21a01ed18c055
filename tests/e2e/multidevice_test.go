package e2e

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/bootstrap"
	"github.com/lf-edge/evelet/tests/devnet"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestMultiDevice: two simulated EVE devices, each in a network namespace
// of its own with its own containerd and agent, join the one cluster; the
// apiserver reaches device 2's kubelet over the bridge (logs, exec); device
// 1 is power-cycled and comes back with the credentials it kept in
// /persist, its /run emptied and its pod running again; device 2 is
// stopped and started the orderly way; after Close nothing of either
// device is left on the host.
func TestMultiDevice(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 20*time.Minute)
	cs := env.cp.Client()
	opts := devnet.DeviceOptions{ControlPlane: env.cp, Evelet: env.evelet, Images: env.images}
	d1 := env.devnet.NewDevice(t, 1, opts)
	d2 := env.devnet.NewDevice(t, 2, opts)
	devs := []*devnet.Device{d1, d2}
	// The cluster is shared: an earlier run may have left CSRs of the name.
	csrsBefore := nodeCSRs(t, d1.NodeName())
	t0 := time.Now()
	for _, d := range devs {
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range devs {
		n, err := d.WaitReady(ctx, 4*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("node %s Ready %v after both devices started, InternalIP %s, agent in netns %s",
			n.Name, time.Since(t0).Round(time.Millisecond), devnet.InternalIP(n), d.NetNS())
	}

	if joined := nodeCSRs(t, d1.NodeName()); len(joined) <= len(csrsBefore) {
		t.Errorf("device 1 joined without a CSR of its own (before %v, after %v): did it bootstrap?", csrsBefore, joined)
	}
	// Names of this run: the cluster is shared, and a pod of an earlier
	// run may still be listed (its node gone, pod GC not yet done).
	sfx := strconv.FormatInt(time.Now().UnixNano()%1_000_000, 36)
	one, two := "md-one-"+sfx, "md-two-"+sfx
	for _, app := range []string{one, two} {
		t.Cleanup(func() {
			cs.AppsV1().Deployments("default").Delete(ctx, app, metav1.DeleteOptions{})
		})
	}
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, busyboxDeployment(one, d1.NodeName(), "echo one-up; exec sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, busyboxDeployment(two, d2.NodeName(), "echo hello-from-device-2; exec sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod2 := runningPod(t, two, 3*time.Minute)
	if pod2.Spec.NodeName != d2.NodeName() || !strings.HasPrefix(pod2.Status.PodIP, "10.244.22.") {
		t.Fatalf("pod of %s on %s with IP %s, want %s and 10.244.22.x", two, pod2.Spec.NodeName, pod2.Status.PodIP, d2.NodeName())
	}
	// logs and exec go apiserver -> kubelet at 10.250.0.12:10250 over the
	// bridge, then kubelet -> containerd's stream server in the namespace.
	waitFor(t, time.Minute, "kubectl logs from device 2", func() (bool, error) {
		out, err := env.cp.Kubectl(ctx, "logs", "-n", "default", pod2.Name)
		return strings.Contains(out, "hello-from-device-2"), fmt.Errorf("%v: %s", err, out)
	})
	out, err := env.cp.Kubectl(ctx, "exec", "-n", "default", pod2.Name, "--", "sh", "-c", "echo exec-$((40+2)) from $(hostname)")
	if err != nil || !strings.Contains(out, "exec-42 from "+pod2.Name) {
		t.Fatalf("kubectl exec on device 2: %v: %q", err, out)
	}
	pod1 := runningPod(t, one, 3*time.Minute)
	if pod1.Spec.NodeName != d1.NodeName() || !strings.HasPrefix(pod1.Status.PodIP, "10.244.21.") {
		t.Fatalf("pod of %s on %s with IP %s, want %s and 10.244.21.x", one, pod1.Spec.NodeName, pod1.Status.PodIP, d1.NodeName())
	}
	pod1ID, pod2ID := containerID(pod1), containerID(pod2)
	// The pod's process, as device 1's containerd reports it: under the
	// device's cgroup root, where the reboot's sweep finds it.
	pod1PID := criContainerPID(t, d1, pod1ID)
	pod1Start := procStart(pod1PID)
	if cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pod1PID)); !strings.Contains(string(cg), ":"+d1.CgroupRoot()+"/") {
		t.Errorf("pod process %d not under %s:\n%s", pod1PID, d1.CgroupRoot(), cg)
	}

	// Power-cycle device 1.
	csrsBefore = nodeCSRs(t, d1.NodeName())
	runMark, persistMark := filepath.Join(d1.RunDir(), "h1-mark"), filepath.Join(d1.PersistDir(), "h1-mark")
	for _, f := range []string{runMark, persistMark} {
		if err := os.WriteFile(f, []byte("before reboot\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	oldAgent, oldCtrd := d1.AgentPID(), d1.Containerd().PID()
	rebootAt := time.Now()
	if err := d1.Reboot(devnet.RebootOptions{}); err != nil {
		t.Fatal(err)
	}
	// Everything of the old boot is dead once Reboot returns: a Lease
	// renewal after upAt is the new kubelet's.
	upAt := time.Now()
	t.Logf("device 1 rebooted in %v (down and up again, agent started)", upAt.Sub(rebootAt).Round(time.Millisecond))
	if _, err := os.Stat(runMark); !os.IsNotExist(err) {
		t.Errorf("%s survived the reboot: run was not emptied (%v)", runMark, err)
	}
	if _, err := os.Stat(persistMark); err != nil {
		t.Errorf("%s lost in the reboot: %v", persistMark, err)
	}
	if st := procStart(pod1PID); st != "" && st == pod1Start {
		t.Errorf("pod process %d of the old boot survived the reboot", pod1PID)
	}
	for _, pid := range []int{oldAgent, oldCtrd} {
		if syscall.Kill(pid, 0) == nil && pid != d1.AgentPID() && pid != d1.Containerd().PID() {
			t.Errorf("pid %d of the old boot still runs", pid)
		}
	}
	if _, err := d1.WaitReadyAfter(ctx, upAt, 4*time.Minute); err != nil {
		t.Fatal(err)
	}
	st, err := d1.WaitStatus(ctx, time.Minute, "Running with reused credentials", func(s *agent.Status) bool {
		return s.Phase == agent.PhaseRunning && s.Credentials == string(bootstrap.Reused)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("device 1 back: %+v", *st)
	// The Lease renewed after the reboot: the kubelet has authenticated, so
	// any CSR of this boot would be there by now.
	if after := nodeCSRs(t, d1.NodeName()); len(after) != len(csrsBefore) {
		t.Errorf("CSRs of %s: %v before the reboot, %v after: the reboot asked for new credentials", d1.NodeName(), csrsBefore, after)
	}
	waitFor(t, 3*time.Minute, one+" running again after the reboot", func() (bool, error) {
		p, err := cs.CoreV1().Pods("default").Get(ctx, pod1.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		id := containerID(p)
		return p.Status.Phase == corev1.PodRunning && id != "" && id != pod1ID,
			fmt.Errorf("phase %s, running container %q (before the reboot %q)", p.Status.Phase, id, pod1ID)
	})
	t.Logf("device 1: node Ready and its pod running again %v after the reboot began", time.Since(rebootAt).Round(time.Millisecond))
	if p, err := cs.CoreV1().Pods("default").Get(ctx, pod2.Name, metav1.GetOptions{}); err != nil || containerID(p) != pod2ID {
		t.Errorf("device 2's pod was disturbed by device 1's reboot: %v", err)
	}

	// An orderly restart of device 2: pods removed through the CRI, the
	// agent and containerd stopped, the namespace kept; Start brings it
	// back with a new container for its pod.
	if err := d2.Stop(); err != nil {
		t.Fatal(err)
	}
	if pids := d2.AgentPID(); pids != 0 || d2.Containerd() != nil {
		t.Errorf("after Stop: agent pid %d, containerd %v", pids, d2.Containerd())
	}
	if err := d2.Start(); err != nil {
		t.Fatal(err)
	}
	upAt = time.Now()
	if _, err := d2.WaitReadyAfter(ctx, upAt, 4*time.Minute); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Minute, two+" running again after a Stop and Start", func() (bool, error) {
		p, err := cs.CoreV1().Pods("default").Get(ctx, pod2.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		id := containerID(p)
		return p.Status.Phase == corev1.PodRunning && id != "" && id != pod2ID,
			fmt.Errorf("phase %s, running container %q (before %q)", p.Status.Phase, id, pod2ID)
	})

	for _, d := range devs {
		if err := d.Close(); err != nil {
			t.Errorf("closing %s: %v", d.NetNS(), err)
		}
		if left := d.Leftovers(); len(left) > 0 {
			t.Errorf("%s left behind: %v", d.NetNS(), left)
		}
		if _, err := os.Stat(d.Dir()); !os.IsNotExist(err) {
			t.Errorf("%s: directory %s left behind (%v)", d.NetNS(), d.Dir(), err)
		}
	}
}

// containerID is the id of the pod's running container ("" if none runs):
// a new one means the container was started again.
func containerID(p *corev1.Pod) string {
	for _, c := range p.Status.ContainerStatuses {
		if c.State.Running != nil {
			return c.ContainerID
		}
	}
	return ""
}

// nodeCSRs lists the CSRs a node's kubelet made for itself (client and
// serving, as system:node:<node>) plus the client CSRs made with a bootstrap
// token for that node (subject CN system:node:<node>).
func nodeCSRs(t *testing.T, node string) []string {
	t.Helper()
	l, err := env.cp.Client().CertificatesV1().CertificateSigningRequests().List(testCtx(t, 10*time.Second), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range l.Items {
		if c.Spec.Username == "system:node:"+node || (strings.HasPrefix(c.Spec.Username, "system:bootstrap:") && csrForNode(c.Spec.Request, node)) {
			names = append(names, c.Name)
		}
	}
	return names
}

// csrForNode reports whether a PEM CSR's subject is node's kubelet identity.
func csrForNode(req []byte, node string) bool {
	b, _ := pem.Decode(req)
	if b == nil {
		return false
	}
	r, err := x509.ParseCertificateRequest(b.Bytes)
	return err == nil && r.Subject.CommonName == "system:node:"+node
}

// criContainerPID asks the device's containerd (not evelet) for the pid of
// a container ("<runtime>://<id>" as the pod status names it; evelet's
// shim passes containerd's ids through).
func criContainerPID(t testing.TB, d *devnet.Device, id string) int {
	t.Helper()
	conn, err := d.Containerd().DialCRI()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := runtimeapi.NewRuntimeServiceClient(conn).ContainerStatus(testCtx(t, 10*time.Second),
		&runtimeapi.ContainerStatusRequest{ContainerId: id[strings.Index(id, "://")+3:], Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &info); err != nil || info.Pid == 0 {
		t.Fatalf("no pid for container %s: %v %q", id, err, st.GetInfo()["info"])
	}
	return info.Pid
}

// procStart is a process's start time in clock ticks (/proc/<pid>/stat
// field 22), "" when it is gone or a zombie: with the pid it names one
// process.
func procStart(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" { // a killed process not yet reaped is gone
		return ""
	}
	return f[19] // fields after comm start at 3 (state): 22 - 3 = 19
}
