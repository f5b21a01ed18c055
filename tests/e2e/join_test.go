package e2e

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/bootstrap/intent"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/bootstrap"
	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/internal/nodelabels"
	appsv1 "k8s.io/api/apps/v1"
	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/utils/ptr"
)

const kubeletVersion = "v1.35.4"

func joinFor(node, token string, pins ...string) intent.Join {
	if len(pins) == 0 {
		pins = []string{env.cp.CAPin()}
	}
	return intent.Join{
		Material:   bootstrap.Material{APIServer: env.cp.URL(), Token: token, CACertHashes: pins},
		NodeName:   node,
		DeviceUUID: fmt.Sprintf("6ba7b810-9dad-11d1-80b4-%012d", time.Now().UnixNano()%1e12),
		OSVersion:  "14.5.1-lts-kvm-amd64",
	}
}

func newToken(t testing.TB) string {
	t.Helper()
	tok, err := env.cp.CreateBootstrapToken(testCtx(t, 2*time.Minute), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// deleteNodeAtEnd keeps the shared cluster tidy for the next test.
func deleteNodeAtEnd(t testing.TB, node string) {
	t.Cleanup(func() {
		env.cp.Client().CoreV1().Nodes().Delete(testCtx(t, 30*time.Second), node, metav1.DeleteOptions{})
	})
}

func waitNodeReady(t testing.TB, node string, timeout time.Duration) *corev1.Node {
	t.Helper()
	var got *corev1.Node
	waitFor(t, timeout, "node "+node+" Ready", func() (bool, error) {
		n, err := env.cp.Client().CoreV1().Nodes().Get(testCtx(t, 10*time.Second), node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				got = n
				return true, nil
			}
		}
		return false, fmt.Errorf("not Ready: %v", n.Status.Conditions)
	})
	return got
}

func isReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func csrCount(t *testing.T) int {
	l, err := env.cp.Client().CertificatesV1().CertificateSigningRequests().List(testCtx(t, 10*time.Second), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return len(l.Items)
}

// sandboxesOf lists containerd's sandboxes for a pod UID, asking containerd
// directly (not through evelet) so the check does not trust the shim.
func sandboxesOf(t *testing.T, uid string) []*runtimeapi.PodSandbox {
	conn, err := env.ctrd.DialCRI()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r, err := runtimeapi.NewRuntimeServiceClient(conn).ListPodSandbox(testCtx(t, 10*time.Second), &runtimeapi.ListPodSandboxRequest{
		Filter: &runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{"io.kubernetes.pod.uid": uid}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return r.Items
}

func busyboxDeployment(name, node string, cmd string) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeSelector:                  map[string]string{corev1.LabelHostname: node},
					TerminationGracePeriodSeconds: ptr.To[int64](2),
					Containers: []corev1.Container{{
						Name: "main", Image: images.BusyboxRef, ImagePullPolicy: corev1.PullNever,
						Command: []string{"sh", "-c", cmd},
					}},
				},
			},
		},
	}
}

func runningPod(t testing.TB, app string, timeout time.Duration) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	waitFor(t, timeout, "pod of "+app+" Running", func() (bool, error) {
		l, err := env.cp.Client().CoreV1().Pods("default").List(testCtx(t, 10*time.Second), metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil || len(l.Items) == 0 {
			return false, err
		}
		p := l.Items[0]
		if p.Status.Phase != corev1.PodRunning {
			return false, fmt.Errorf("phase %s, conditions %v, statuses %v", p.Status.Phase, p.Status.Conditions, p.Status.ContainerStatuses)
		}
		pod = &p
		return true, nil
	})
	return pod
}

// TestJoinRunPodAndRestart is the walking skeleton: the device joins by
// bootstrap token, becomes a Ready node, runs a Deployment's pod placed by
// the real scheduler, serves logs and exec, removes the sandbox when the pod
// goes, and restarts without a new CSR.
func TestJoinRunPodAndRestart(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 15*time.Minute)
	cs := env.cp.Client()
	node := "edge-skeleton"
	deleteNodeAtEnd(t, node)
	j := joinFor(node, newToken(t))
	d := newDevice(t, j)
	csrsBefore := csrCount(t)
	d.start()

	n := waitNodeReady(t, node, 3*time.Minute)
	if got := n.Labels[nodelabels.DeviceUUID]; got != j.DeviceUUID {
		t.Errorf("device-uuid label = %q, want %q", got, j.DeviceUUID)
	}
	if got := n.Labels[nodelabels.OSVersion]; got != j.OSVersion {
		t.Errorf("os-version label = %q, want %q", got, j.OSVersion)
	}
	if n.Spec.ProviderID != "eve://"+j.DeviceUUID {
		t.Errorf("providerID = %q", n.Spec.ProviderID)
	}
	if n.Status.NodeInfo.KubeletVersion != kubeletVersion {
		t.Errorf("kubelet version = %q, want %s", n.Status.NodeInfo.KubeletVersion, kubeletVersion)
	}
	if !strings.HasPrefix(n.Status.NodeInfo.ContainerRuntimeVersion, "evelet://") {
		t.Errorf("container runtime = %q, want evelet://...", n.Status.NodeInfo.ContainerRuntimeVersion)
	}
	wide, err := env.cp.Kubectl(ctx, "get", "node", node, "-o", "wide")
	t.Logf("kubectl get node -o wide:\n%s", wide)
	if err != nil || !contains(wide, node, "Ready", kubeletVersion, "evelet://") {
		t.Errorf("kubectl get node -o wide: %v\n%s", err, wide)
	}
	// TLS bootstrapping happened through an auto-approved CSR for this node.
	csrs, _ := cs.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	approved := false
	for _, c := range csrs.Items {
		for _, cond := range c.Status.Conditions {
			if cond.Type == certv1.CertificateApproved && strings.HasPrefix(c.Spec.Username, "system:bootstrap:") && len(c.Status.Certificate) > 0 {
				approved = true
			}
		}
	}
	if !approved || csrCount(t) <= csrsBefore {
		t.Errorf("no approved bootstrap CSR was issued (before %d, now %d)", csrsBefore, csrCount(t))
	}
	assertCredentialModes(t, d)
	st := d.waitStatus(30*time.Second, "status Running/bootstrapped", func(s agent.Status) bool {
		return s.Phase == agent.PhaseRunning && s.Credentials == string(bootstrap.Bootstrapped) && s.ClientCertExpiry != nil
	})
	t.Logf("evelet status: %+v", st)

	// A Deployment's pod, placed by the scheduler.
	dep := busyboxDeployment("hello", node, "echo hello-from-evelet; exec sleep 3600")
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := runningPod(t, "hello", 2*time.Minute)
	if pod.Spec.NodeName != node {
		t.Fatalf("pod on %q, want %q", pod.Spec.NodeName, node)
	}
	if pod.Status.PodIP == "" || !strings.HasPrefix(pod.Status.PodIP, "10.244.7.") {
		t.Errorf("pod IP %q not from the node's pod network", pod.Status.PodIP)
	}
	waitFor(t, 30*time.Second, "kubectl logs", func() (bool, error) {
		out, err := env.cp.Kubectl(ctx, "logs", "-n", "default", pod.Name)
		return strings.Contains(out, "hello-from-evelet"), fmt.Errorf("%v: %s", err, out)
	})
	out, err := env.cp.Kubectl(ctx, "exec", "-n", "default", pod.Name, "--", "sh", "-c", "echo exec-$((40+2)) from $(hostname)")
	if err != nil || !strings.Contains(out, "exec-42 from "+pod.Name) {
		t.Fatalf("kubectl exec: %v: %q", err, out)
	}
	uid := string(pod.UID)
	if n := len(sandboxesOf(t, uid)); n != 1 {
		t.Fatalf("containerd has %d sandboxes for the pod, want 1", n)
	}

	// Deleting the Deployment removes the sandbox from containerd.
	if err := cs.AppsV1().Deployments("default").Delete(ctx, "hello", metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationForeground)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Minute, "pod sandbox removed from containerd", func() (bool, error) {
		_, err := cs.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
		left := sandboxesOf(t, uid)
		return apierrors.IsNotFound(err) && len(left) == 0, fmt.Errorf("pod get: %v, sandboxes left: %d", err, len(left))
	})

	// Restart with credentials present: same node, no new client CSR. A
	// client CSR would come before the new kubelet's first authenticated
	// request, so once that kubelet has renewed its Lease the CSR list is
	// final for this start: no waiting "long enough".
	csrs1 := clientCSRs(t)
	before, _ := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	d.stop()
	restarted := time.Now()
	d.start()
	d.waitStatus(time.Minute, "status Running/reused", func(s agent.Status) bool {
		return s.Phase == agent.PhaseRunning && s.Credentials == string(bootstrap.Reused)
	})
	after := waitNodeReady(t, node, 2*time.Minute)
	waitLeaseRenewedAfter(t, node, restarted, 2*time.Minute)
	for name := range clientCSRs(t) {
		if !csrs1[name] {
			t.Errorf("restart with credentials created client CSR %s", name)
		}
	}
	if after.UID != before.UID {
		t.Errorf("node object replaced on restart (uid %s -> %s)", before.UID, after.UID)
	}
}

// clientCSRs names the kubelet client-certificate CSRs in the cluster.
func clientCSRs(t *testing.T) map[string]bool {
	t.Helper()
	l, err := env.cp.Client().CertificatesV1().CertificateSigningRequests().List(testCtx(t, 10*time.Second), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, c := range l.Items {
		if c.Spec.SignerName == certv1.KubeAPIServerClientKubeletSignerName {
			names[c.Name] = true
		}
	}
	return names
}

// waitLeaseRenewedAfter waits until the node's Lease in kube-node-lease
// was renewed after since (by the kubelet's clock, which is this host's),
// and returns the renew time: a kubelet started after since is alive and
// authenticated.
func waitLeaseRenewedAfter(t testing.TB, node string, since time.Time, timeout time.Duration) time.Time {
	t.Helper()
	var got time.Time
	waitFor(t, timeout, "lease of "+node+" renewed after "+since.Format(time.RFC3339Nano), func() (bool, error) {
		l, err := env.cp.Client().CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(testCtx(t, 10*time.Second), node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if l.Spec.RenewTime == nil || !l.Spec.RenewTime.After(since) {
			return false, fmt.Errorf("renewTime %v", l.Spec.RenewTime)
		}
		got = l.Spec.RenewTime.Time
		return true, nil
	})
	return got
}

// TestWrongCAPin: the device refuses, names both pins, writes no credentials
// and never starts a kubelet.
func TestWrongCAPin(t *testing.T) {
	needEnv(t)
	node := "edge-wrong-pin"
	deleteNodeAtEnd(t, node)
	wrong := "sha256:" + strings.Repeat("ab", 32)
	d := newDevice(t, joinFor(node, newToken(t), wrong))
	d.start()
	st := d.waitStatus(time.Minute, "Failed", func(s agent.Status) bool { return s.Phase == agent.PhaseFailed })
	if !contains(st.LastError, wrong, env.cp.CAPin()) {
		t.Fatalf("error %q must name the expected pin %s and the actual pin %s", st.LastError, wrong, env.cp.CAPin())
	}
	if !contains(d.log(), wrong, env.cp.CAPin()) {
		t.Errorf("agent log does not carry the pin error")
	}
	assertNoCredentials(t, d)
	if _, err := env.cp.Client().CoreV1().Nodes().Get(testCtx(t, 10*time.Second), node, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a Node exists despite the refused join: %v", err)
	}
}

// TestWrongToken: a token the cluster does not know, and a known id with the
// wrong secret, each give a clear error and no credentials.
func TestWrongToken(t *testing.T) {
	needEnv(t)
	good := newToken(t)
	id := strings.SplitN(good, ".", 2)[0]
	// An unknown id may still get its signature (the bootstrapsigner is
	// late): it is retried (Joining), a wrong secret is final (Failed).
	for name, c := range map[string]struct {
		token, want string
		phase       agent.Phase
	}{
		"wrong secret": {id + ".ffffffffffffffff", "wrong token secret", agent.PhaseFailed},
		"unknown id":   {"zzzzzz.ffffffffffffffff", `"zzzzzz" is unknown`, agent.PhaseJoining},
	} {
		t.Run(strings.ReplaceAll(name, " ", "-"), func(t *testing.T) {
			node := "edge-bad-token"
			deleteNodeAtEnd(t, node)
			d := newDevice(t, joinFor(node, c.token))
			d.start()
			st := d.waitStatus(time.Minute, string(c.phase)+" saying "+c.want, func(s agent.Status) bool {
				return s.Phase == c.phase && strings.Contains(s.LastError, c.want)
			})
			if !strings.Contains(st.LastError, c.want) {
				t.Fatalf("error %q, want it to say %q", st.LastError, c.want)
			}
			if strings.Contains(st.LastError, "ffffffffffffffff") || strings.Contains(d.log(), "ffffffffffffffff") {
				t.Errorf("token secret leaked into status or log")
			}
			assertNoCredentials(t, d)
		})
	}
}

// TestLateAPIServer: the device starts while the apiserver is down, keeps
// retrying, and joins once it appears.
func TestLateAPIServer(t *testing.T) {
	needEnv(t)
	node := "edge-late"
	deleteNodeAtEnd(t, node)
	d := newDevice(t, joinFor(node, newToken(t)))
	if err := env.cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			env.cp.StartAPIServer(testCtx(t, 2*time.Minute))
		}
	})
	d.start()
	// Two failed attempts, the second after the first: the agent keeps
	// retrying (and stays Joining) rather than giving up.
	retrying := func(s agent.Status) bool {
		if s.Phase != agent.PhaseJoining && s.Phase != agent.PhaseStarting {
			t.Fatalf("phase %s while the apiserver is down, want Joining", s.Phase)
		}
		return s.Phase == agent.PhaseJoining && strings.Contains(s.LastError, "cluster-info") && s.LastErrorTime != nil
	}
	first := d.waitStatus(time.Minute, "a failed attempt while the apiserver is down", retrying)
	d.waitStatus(2*time.Minute, "a later attempt while the apiserver is down", func(s agent.Status) bool {
		return retrying(s) && s.LastErrorTime.After(*first.LastErrorTime)
	})
	assertNoCredentials(t, d)
	if err := env.cp.StartAPIServer(testCtx(t, 2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	restarted = true
	waitNodeReady(t, node, 3*time.Minute)
}

func assertNoCredentials(t *testing.T, d *device) {
	t.Helper()
	if entries, err := readDirNames(d.credDir()); err == nil && len(entries) > 0 {
		t.Fatalf("credentials written despite a refused join: %v", entries)
	}
}

// assertCredentialModes: the credentials directory is 0700 and every
// credential file in it (bootstrap kubeconfig, the kubelet's kubeconfig,
// client certificate and keys, CA, join record) is 0600.
func assertCredentialModes(t *testing.T, d *device) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(d.credDir(), func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || e.Type()&fs.ModeSymlink != 0 {
			return err
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		n++
		// The kubelet writes its self-signed serving certificate (public)
		// 0644; the directory's 0700 keeps even that private.
		if info.Mode().Perm() != 0o600 && !strings.HasSuffix(p, ".crt") {
			t.Errorf("%s has mode %v, want 0600", p, info.Mode().Perm())
		}
		return nil
	})
	if st, err := os.Stat(d.credDir()); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("credentials dir %s: %v %v, want mode 0700", d.credDir(), st.Mode().Perm(), err)
	}
	if err != nil || n < 4 {
		t.Errorf("credential files: %d found, %v", n, err)
	}
}

// TestJoinWithKubeconfig: join material can be a ready kubeconfig (here a
// bootstrap-token kubeconfig); the kubelet bootstraps from it.
func TestJoinWithKubeconfig(t *testing.T) {
	needEnv(t)
	node := "edge-kubeconfig"
	deleteNodeAtEnd(t, node)
	kc := bootstrap.BootstrapKubeconfig(env.cp.URL(), env.cp.CACertPEM(), newToken(t))
	b, err := clientcmd.Write(*kc)
	if err != nil {
		t.Fatal(err)
	}
	j := joinFor(node, "")
	j.Material = bootstrap.Material{Kubeconfig: string(b)}
	d := newDevice(t, j)
	d.start()
	waitNodeReady(t, node, 3*time.Minute)
	st := d.waitStatus(30*time.Second, "Running", func(s agent.Status) bool { return s.Phase == agent.PhaseRunning })
	if st.APIServer != env.cp.URL() {
		t.Errorf("status apiserver %q, want the kubeconfig's server %s", st.APIServer, env.cp.URL())
	}
	assertCredentialModes(t, d)
}
