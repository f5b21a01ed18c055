package e2e

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lf-edge/evelet/agent"
	kubeletshim "github.com/lf-edge/evelet/kubelet-shim"
	"github.com/lf-edge/evelet/policy"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// TestKubeletGuardrails: what a cluster-admin could do through the
// kubelet itself, before or beside any CRI request, is refused on a
// default-policy device, with the rule and the knob in `kubectl describe
// pod`, and nothing on the host changes. One device for all parts (a
// device start is the slow step).
func TestKubeletGuardrails(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 20*time.Minute)
	cs := env.cp.Client()
	node := "edge-kubelet-guard"
	deleteNodeAtEnd(t, node)
	d, sim := newSimDevice(t, node)
	cluster := simCluster(t, env.cp, "prod", "21111111-2222-4333-8444-555555555555")
	const pidsLimit = 200
	cluster.ConfigItems[kubeletshim.ItemPodPidsLimit] = strconv.Itoa(pidsLimit)
	if err := sim.SetCluster(cluster); err != nil {
		t.Fatal(err)
	}
	approvedBefore := env.cp.ServingCSRsApproved()
	d.start()
	waitNodeReady(t, node, 3*time.Minute)

	var pods []string
	t.Cleanup(func() {
		for _, p := range pods {
			cs.CoreV1().Pods("default").Delete(context.Background(), p, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		}
	})
	create := func(p *corev1.Pod) *corev1.Pod {
		t.Helper()
		got, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create %s: %v", p.Name, err)
		}
		pods = append(pods, p.Name)
		return got
	}

	// The pods an attacker would send, all at once.

	// 1. hostPath DirectoryOrCreate outside the allowed paths: the kubelet
	// would mkdir it on the host before any CRI call.
	planted := filepath.Join("/var/tmp", fmt.Sprintf("evelet-e2e-planted-%d", time.Now().UnixNano()))
	t.Cleanup(func() { os.RemoveAll(planted) })
	hostPathPod := create(guardedPod("kg-hostpath", node, func(p *corev1.Pod) {
		p.Spec.Volumes = []corev1.Volume{{Name: "h", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
			Path: filepath.Join(planted, "sub"), Type: ptr.To(corev1.HostPathDirectoryOrCreate)}}}}
		p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "h", MountPath: "/host"}}
	}))

	// 2. Probes and a lifecycle hook aimed at the device's loopback: a
	// listener there counts every connection.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var connects atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			connects.Add(1)
			c.Close()
		}
	}()
	port := int32(ln.Addr().(*net.TCPAddr).Port)
	probePod := create(guardedPod("kg-probe", node, func(p *corev1.Pod) {
		c := &p.Spec.Containers[0]
		c.LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Host: "127.0.0.1", Port: intstr.FromInt32(port)}}, PeriodSeconds: 1}
		c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Host: "127.0.0.1", Port: intstr.FromInt32(port)}}, PeriodSeconds: 1}
		c.Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{HTTPGet: &corev1.HTTPGetAction{Host: "127.0.0.1", Port: intstr.FromInt32(port)}}}
	}))

	// 3. A Memory emptyDir without sizeLimit in a pod without memory limits.
	memPod := create(guardedPod("kg-memvol", node, func(p *corev1.Pod) {
		p.Spec.Volumes = []corev1.Volume{{Name: "m", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}}}
		p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "m", MountPath: "/m"}}
	}))

	// 4. A fork bomb (bounded, so that a failing test cannot hurt the host).
	forkPod := create(guardedPod("kg-forkbomb", node, func(p *corev1.Pod) {
		p.Spec.Containers[0].Command = []string{"sh", "-c",
			// In a subshell: ash gives up on the first failed fork, and
			// the pod must live on to be counted.
			"(i=0; while [ $i -lt 400 ]; do sleep 3600 & i=$((i+1)); done); echo forkloop-done; exec sleep 3600"}
	}))

	refused := []struct {
		pod        *corev1.Pod
		rule, knob string
	}{
		{hostPathPod, policy.RuleHostPath, policy.KeyAllowedHostPaths},
		{probePod, policy.RuleProbeHost, policy.KeyAllowProbeHost},
		{memPod, policy.RuleUnboundedMemoryVolume, policy.KeyAllowUnboundedMemoryVolumes},
	}
	for _, r := range refused {
		t.Run("refused-"+r.rule, func(t *testing.T) {
			waitRefused(t, ctx, env.cp.Client(), r.pod.Name, r.rule, r.knob)
			if n := len(sandboxesOf(t, string(r.pod.UID))); n != 0 {
				t.Errorf("containerd has %d sandboxes for the refused pod", n)
			}
		})
	}
	// Nothing reached the host: the hostPath was never created...
	if _, err := os.Lstat(planted); !os.IsNotExist(err) {
		t.Errorf("refused hostPath %s exists on the host: %v", planted, err)
	}
	// ...and no probe or hook ever connected (the pod has no sandbox, so
	// the kubelet has no container to probe; checked above).
	if n := connects.Load(); n != 0 {
		t.Errorf("the device's loopback listener saw %d connections from probes", n)
	}

	t.Run("pod-pids-limit", func(t *testing.T) {
		waitFor(t, 3*time.Minute, "fork loop finished", func() (bool, error) {
			out, err := env.cp.Kubectl(ctx, "logs", "-n", "default", forkPod.Name)
			return strings.Contains(out, "forkloop-done"), fmt.Errorf("%v: %s", err, tail(out, 3))
		})
		out, _ := env.cp.Kubectl(ctx, "logs", "-n", "default", forkPod.Name)
		if !strings.Contains(out, "can't fork") { // busybox ash, on EAGAIN from fork
			t.Errorf("no fork failed in the pod; log:\n%s", tail(out, 5))
		}
		max, cur := podPids(t, string(forkPod.UID))
		if max != strconv.Itoa(pidsLimit) {
			t.Errorf("pod cgroup pids.max = %q, want %d", max, pidsLimit)
		}
		if n, _ := strconv.Atoi(cur); n == 0 || n > pidsLimit {
			t.Errorf("pod has %s processes, limit %d", cur, pidsLimit)
		}
	})

	t.Run("nodes-proxy-debug-handlers", func(t *testing.T) {
		base := "/api/v1/nodes/" + node + "/proxy/"
		// Control: the proxy path works, over verified TLS.
		if out, err := env.cp.Kubectl(ctx, "get", "--raw", base+"healthz"); err != nil || strings.TrimSpace(out) != "ok" {
			t.Fatalf("nodes/proxy healthz: %v %q", err, out)
		}
		for _, p := range []string{"logs/", "debug/pprof/", "debug/flags/v"} {
			out, err := env.cp.Kubectl(ctx, "get", "--raw", base+p)
			// Not served: 404 for logs and flags, 405 "disabled" for pprof.
			if err == nil || !(strings.Contains(out, "NotFound") || strings.Contains(out, "MethodNotAllowed") || strings.Contains(out, "disabled")) {
				t.Errorf("nodes/proxy %s: %v\n%s", p, err, tail(out, 5))
			}
		}
		out, err := env.cp.Kubectl(ctx, "get", "--raw", base+"configz")
		if err != nil || strings.Contains(out, "kubeletconfig") {
			t.Errorf("configz still serves the kubelet config: %v %s", err, tail(out, 3))
		}
	})

	t.Run("serving-certificate-and-addresses", func(t *testing.T) {
		if env.cp.ServingCSRsApproved() <= approvedBefore {
			t.Errorf("no kubelet-serving CSR approved for this node")
		}
		b, err := os.ReadFile(filepath.Join(d.credDir(), "pki", "kubelet-server-current.pem"))
		if err != nil {
			t.Fatalf("kubelet serving certificate: %v", err)
		}
		blk, _ := pem.Decode(b)
		for blk != nil && blk.Type != "CERTIFICATE" {
			blk, _ = pem.Decode([]byte(strings.SplitN(string(b), "-----END "+blk.Type+"-----", 2)[1]))
		}
		if blk == nil {
			t.Fatal("no certificate in kubelet-server-current.pem")
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AddCert(env.cp.CACert())
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("serving certificate not from the cluster CA: %v", err)
		}
		l := listeners(t)
		if a := l[10250]; len(a) == 0 || contains(strings.Join(a, " "), "0.0.0.0") || contains(strings.Join(a, " "), "::") {
			t.Errorf("kubelet port 10250 listens on %v, want only the node IP", a)
		}
		if a := l[10248]; len(a) != 1 || a[0] != "127.0.0.1" {
			t.Errorf("kubelet healthz 10248 listens on %v, want 127.0.0.1", a)
		}
	})

	// The owner allows a host path through EVE: the same kind of pod runs
	// without a kubelet restart, and the guard creates its directory.
	t.Run("allowed-host-path-follows-owner", func(t *testing.T) {
		before := d.waitKubeletSettled(time.Minute)
		allowed := filepath.Join(d.dir, "owner-data")
		if err := os.Mkdir(allowed, 0o755); err != nil {
			t.Fatal(err)
		}
		items := map[string]string{"evelet.apiserver-url": env.cp.URL(), kubeletshim.ItemPodPidsLimit: strconv.Itoa(pidsLimit),
			policy.KeyAllowedHostPaths: allowed}
		if err := sim.SetConfigItems(items); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "kubelet policy file lists the allowed path", func() (bool, error) {
			b, err := os.ReadFile(filepath.Join(d.runDir(), "kubelet-policy.json"))
			return strings.Contains(string(b), allowed), err
		})
		target := filepath.Join(allowed, "new", "sub")
		p := create(guardedPod("kg-hostpath-allowed", node, func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "h", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
				Path: target, Type: ptr.To(corev1.HostPathDirectoryOrCreate)}}}}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "h", MountPath: "/host"}}
			p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")}
		}))
		waitFor(t, 2*time.Minute, "allowed hostPath pod Running", func() (bool, error) {
			got, err := cs.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return got.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s", got.Status.Phase)
		})
		if fi, err := os.Stat(target); err != nil || !fi.IsDir() {
			t.Errorf("allowed DirectoryOrCreate path not created: %v", err)
		}
		after, _ := d.status()
		if before.KubeletPID == 0 || after.KubeletPID != before.KubeletPID {
			t.Errorf("kubelet pid %d -> %d: the owner's change needed a restart", before.KubeletPID, after.KubeletPID)
		}
		if after.Phase != agent.PhaseRunning {
			t.Errorf("phase %s", after.Phase)
		}
	})

	// containerd's own directories are protected wherever its
	// configuration put them (here under the e2e's work directory, no stock
	// path), because containerd names them (cri/containerd.RuntimeDirs):
	// the owner allowing their parent does not open them. Before, only the
	// socket's directory and the stock paths were protected, and this pod
	// got containerd's content store.
	t.Run("containerd-dirs-protected-where-they-are", func(t *testing.T) {
		items := map[string]string{"evelet.apiserver-url": env.cp.URL(), kubeletshim.ItemPodPidsLimit: strconv.Itoa(pidsLimit),
			policy.KeyAllowedHostPaths: env.ctrd.Dir()}
		if err := sim.SetConfigItems(items); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "kubelet policy file allows containerd's parent", func() (bool, error) {
			b, err := os.ReadFile(filepath.Join(d.runDir(), "kubelet-policy.json"))
			return strings.Contains(string(b), `"`+env.ctrd.Dir()+`"`), err
		})
		name := "kg-containerd-root"
		create(guardedPod(name, node, func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "h", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
				Path: filepath.Join(env.ctrd.Dir(), "root", "io.containerd.content.v1.content"), Type: ptr.To(corev1.HostPathDirectory)}}}}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "h", MountPath: "/host"}}
		}))
		waitRefused(t, ctx, cs, name, policy.RuleHostPath, "")
		wantFailedMount(t, ctx, cs, name, policy.RuleHostPath)
		out, err := env.cp.Kubectl(ctx, "describe", "pod", "-n", "default", name)
		if err != nil || !strings.Contains(out, "containerd's root directory (as containerd reports it)") {
			t.Errorf("describe pod %s does not name containerd's root: %v\n%s", name, err, tail(out, 15))
		}
	})
}

// podPids reads pids.max and pids.current of a pod's cgroup, on cgroup v1
// or v2, from the host (not from the pod, which may be unable to fork).
func podPids(t *testing.T, uid string) (max, cur string) {
	t.Helper()
	var dirs []string
	for _, pat := range []string{
		"/sys/fs/cgroup/pids/kubepods*/pod" + uid, "/sys/fs/cgroup/pids/kubepods*/*/pod" + uid,
		"/sys/fs/cgroup/kubepods*/pod" + uid, "/sys/fs/cgroup/kubepods*/*/pod" + uid,
	} {
		m, _ := filepath.Glob(pat)
		dirs = append(dirs, m...)
	}
	if len(dirs) == 0 {
		t.Fatalf("no pids cgroup for pod %s", uid)
	}
	read := func(f string) string {
		b, err := os.ReadFile(filepath.Join(dirs[0], f))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	return read("pids.max"), read("pids.current")
}

// listeners maps a TCP port to the local addresses listening on it
// (/proc/net/tcp and tcp6 of this network namespace, the kubelet's).
func listeners(t *testing.T) map[int][]string {
	t.Helper()
	out := map[int][]string{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 4 || fields[3] != "0A" { // LISTEN
				continue
			}
			hexIP, hexPort, _ := strings.Cut(fields[1], ":")
			port, _ := strconv.ParseInt(hexPort, 16, 32)
			out[int(port)] = append(out[int(port)], procNetIP(hexIP))
		}
		fh.Close()
	}
	return out
}

// procNetIP decodes /proc/net/tcp's address: 32-bit words in host (little
// endian) order.
func procNetIP(h string) string {
	b := make([]byte, len(h)/2)
	for i := range b {
		v, _ := strconv.ParseUint(h[2*i:2*i+2], 16, 8)
		b[i] = byte(v)
	}
	for w := 0; w+4 <= len(b); w += 4 {
		b[w], b[w+1], b[w+2], b[w+3] = b[w+3], b[w+2], b[w+1], b[w]
	}
	return net.IP(b).String()
}
