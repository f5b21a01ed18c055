package apicache

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lf-edge/evelet/tests/controlplane"
	"github.com/sirupsen/logrus"
	authnv1 "k8s.io/api/authentication/v1"
	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/certificate/csr"
	"k8s.io/utils/ptr"
)

const testNode = "apicache-node"

var podGVR = schema.GroupVersionResource{Version: "v1", Resource: "pods"}

// TestProxyOfflineRestart runs the proxy between a node's client and a real
// kube-apiserver: what the node read online (its pods through a watch-list
// informer, a ConfigMap, a service account token) is served by a new proxy
// on the same cache directory (a reboot) while the apiserver is down;
// writes are refused with 503; once the apiserver is back the informer's
// watch ends, resumes upstream and sees a pod deleted meanwhile.
func TestProxyOfflineRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cp, err := controlplane.Start(ctx, controlplane.Options{Dir: filepath.Join(t.TempDir(), "cp"), BinDir: os.Getenv("KUBE_BIN_DIR")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	admin := cp.Client()
	dir := t.TempDir()
	upstreamKC := nodeKubeconfig(ctx, t, cp, dir)

	ns := "default"
	// A Node, so the pod garbage collector keeps its pods.
	if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cfg"}, Data: map[string]string{"k": "v1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pods []*corev1.Pod
	for _, name := range []string{"keep", "gone"} {
		p, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{NodeName: testNode, Containers: []corev1.Container{{Name: "c", Image: "busybox"}},
				Volumes: []corev1.Volume{{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := admin.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		t.Fatal("no default service account:", err)
	}

	cacheDir := filepath.Join(dir, "apicache")
	start := func(ctx context.Context) (*Proxy, kubernetes.Interface) {
		p, err := New(Config{Dir: cacheDir, Clients: []Client{{Name: "kubelet", Kubeconfig: upstreamKC}},
			Log: logrus.NewEntry(logrus.StandardLogger()), ProbeEvery: 300 * time.Millisecond, ProbeTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { defer close(done); _ = p.Run(ctx) }()
		t.Cleanup(func() { <-done })
		kc := filepath.Join(dir, "via-proxy.kubeconfig")
		if err := p.WriteKubeconfig("kubelet", kc); err != nil {
			t.Fatal(err)
		}
		rc, err := clientcmd.BuildConfigFromFlags("", kc)
		if err != nil {
			t.Fatal(err)
		}
		rc.ContentType = "application/vnd.kubernetes.protobuf" // as the kubelet
		return p, kubernetes.NewForConfigOrDie(rc)
	}
	tokenReq := func(cs kubernetes.Interface) (*authnv1.TokenRequest, error) {
		return cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "default", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
			ExpirationSeconds: ptr.To[int64](3600),
			BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pods[0].Name, UID: pods[0].UID}}}, metav1.CreateOptions{})
	}

	// Not joined yet when the proxy starts (its client has no kubeconfig),
	// as in the agent at a first boot: the first requests once the
	// credentials exist are forwarded, not answered from the empty cache
	// (an empty pod list would make a kubelet stop its containers).
	func() {
		jdir := t.TempDir()
		later := filepath.Join(jdir, "kubeconfig")
		p, err := New(Config{Dir: filepath.Join(jdir, "cache"), Clients: []Client{{Name: "kubelet", Kubeconfig: later}},
			Log: logrus.NewEntry(logrus.StandardLogger()), ProbeEvery: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		pctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = p.Run(pctx) }()
		defer func() { stop(); <-done }()
		b, err := os.ReadFile(upstreamKC)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(later, b, 0o600); err != nil {
			t.Fatal(err)
		}
		via := filepath.Join(jdir, "via-proxy.kubeconfig")
		if err := p.WriteKubeconfig("kubelet", via); err != nil {
			t.Fatal(err)
		}
		rc, err := clientcmd.BuildConfigFromFlags("", via)
		if err != nil {
			t.Fatal(err)
		}
		l, err := kubernetes.NewForConfigOrDie(rc).CoreV1().Pods(ns).List(ctx, metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("spec.nodeName", testNode).String()})
		if err != nil || len(l.Items) != 2 {
			t.Fatalf("first list before any probe: %d pods, %v; want the node's 2 pods from the apiserver", len(l.Items), err)
		}
	}()

	// Online: the node's client reads through the proxy.
	ctx1, stop1 := context.WithCancel(ctx)
	p1, cs := start(ctx1)
	if !waitState(t, p1, true) {
		t.Fatal("proxy offline with the apiserver up")
	}
	podNames := watchPods(ctx1, t, cs)
	waitNames(t, podNames, "gone", "keep")
	if _, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "cfg", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	tok1, err := tokenReq(cs)
	if err != nil {
		t.Fatal(err)
	}
	stop1()

	// The apiserver goes; a new proxy (the node rebooted) answers from disk.
	if err := cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	ctx2, stop2 := context.WithCancel(ctx)
	defer stop2()
	p2, cs2 := start(ctx2)
	if waitState(t, p2, false) {
		t.Fatal("proxy online with the apiserver down")
	}
	podNames2 := watchPods(ctx2, t, cs2)
	waitNames(t, podNames2, "gone", "keep")
	cm, err := cs2.CoreV1().ConfigMaps(ns).Get(ctx, "cfg", metav1.GetOptions{})
	if err != nil || cm.Data["k"] != "v1" {
		t.Fatalf("cached ConfigMap: %v %v", cm, err)
	}
	tok2, err := tokenReq(cs2)
	if err != nil || tok2.Status.Token != tok1.Status.Token {
		t.Fatalf("cached token: same=%v err=%v", err == nil && tok2.Status.Token == tok1.Status.Token, err)
	}
	_, err = cs2.CoreV1().ConfigMaps(ns).Get(ctx, "never-read", metav1.GetOptions{})
	if !apierrors.IsServiceUnavailable(err) {
		t.Fatalf("uncached get: want 503, got %v", err)
	}
	// A scope the node never listed online is not "empty" offline.
	if _, err := cs2.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsServiceUnavailable(err) {
		t.Fatalf("list of a scope never listed online: want 503, got %v", err)
	}
	st := pods[0].DeepCopy()
	st.Status.Message = "offline write"
	if _, err := cs2.CoreV1().Pods(ns).UpdateStatus(ctx, st, metav1.UpdateOptions{}); !apierrors.IsServiceUnavailable(err) {
		t.Fatalf("offline write: want 503, got %v", err)
	}
	if s := p2.Stats(); s.Hits == 0 || s.Objects < 4 || s.Online {
		t.Fatalf("stats offline: %+v", s)
	}
	if fi, err := os.Stat(filepath.Join(cacheDir, "kubelet")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("cache dir mode: %v %v", fi, err)
	}
	filepath.Walk(cacheDir, func(path string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", path, fi.Mode().Perm())
		}
		return nil
	})

	// Back online, with a pod deleted while the node was cut off.
	if err := cp.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := admin.CoreV1().Pods(ns).Delete(ctx, "gone", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	waitNames(t, podNames2, "keep")
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return p2.Online(), nil
	}); err != nil {
		t.Fatal("proxy did not come back online")
	}
	if _, ok := p2.clients[0].store.Get(podGVR, ns, "gone"); ok {
		t.Error("deleted pod still cached after reconnect")
	}
	if p2.Stats().Reconnects == 0 {
		t.Error("no reconnect counted")
	}
}

// waitState polls the proxy's state (Run probes in its own goroutine)
// until a probe has told online from offline and, if want, until it is
// online: a probe that timed out on a loaded machine is followed by the
// next one. It returns Online.
func waitState(t *testing.T, p *Proxy, want bool) bool {
	t.Helper()
	var known, online bool
	_ = wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		p.mu.Lock()
		defer p.mu.Unlock()
		known, online = p.known, p.online
		return known && (online || !want), nil
	})
	if !known {
		t.Fatal("no probe answered within 30 s")
	}
	return online
}

// watchPods runs a pod informer as the kubelet does (this node's pods, by
// field selector; watch-list is client-go's default) and returns a func
// giving the names it holds.
func watchPods(ctx context.Context, t *testing.T, cs kubernetes.Interface) func() []string {
	f := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", testNode).String()
	}))
	inf := f.Core().V1().Pods().Informer()
	f.Start(ctx.Done())
	return func() []string {
		var names []string
		for _, k := range inf.GetStore().ListKeys() {
			_, n, _ := cache.SplitMetaNamespaceKey(k)
			names = append(names, n)
		}
		return names
	}
}

func waitNames(t *testing.T, got func() []string, want ...string) {
	t.Helper()
	var last []string
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 45*time.Second, true, func(context.Context) (bool, error) {
		last = got()
		if len(last) != len(want) {
			return false, nil
		}
		m := map[string]bool{}
		for _, n := range last {
			m[n] = true
		}
		for _, n := range want {
			if !m[n] {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("pods seen: %v, want %v", last, want)
	}
}

// nodeKubeconfig gets testNode a client certificate the way the kubelet
// does (a kube-apiserver-client-kubelet CSR, approved here) and writes its
// kubeconfig with certificate files, as the kubelet's.
func nodeKubeconfig(ctx context.Context, t *testing.T, cp *controlplane.ControlPlane, dir string) string {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := certutil.MakeCSR(key, &pkix.Name{CommonName: "system:node:" + testNode, Organization: []string{"system:nodes"}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	name, uid, err := csr.RequestCertificate(cp.Client(), der, "", certv1.KubeAPIServerClientKubeletSignerName, nil,
		[]certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageClientAuth}, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cp.Client().CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.Status.Conditions = append(c.Status.Conditions, certv1.CertificateSigningRequestCondition{Type: certv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: "test"})
	if _, err := cp.Client().CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, name, c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	certPEM, err := csr.WaitForCertificate(wctx, cp.Client(), name, uid)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	pemPath := filepath.Join(dir, "kubelet-client-current.pem")
	if err := os.WriteFile(pemPath, append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})...), 0o600); err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(dir, "kubeconfig")
	cfg := clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"c": {Server: cp.URL(), CertificateAuthorityData: cp.CACertPEM()}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"u": {ClientCertificate: pemPath, ClientKey: pemPath}},
		Contexts:       map[string]*clientcmdapi.Context{"x": {Cluster: "c", AuthInfo: "u"}},
		CurrentContext: "x",
	}
	if err := clientcmd.WriteToFile(cfg, kc); err != nil {
		t.Fatal(err)
	}
	return kc
}

// TestProbeOnlyWhenQuiet: online, the proxy probes only once nothing has
// answered for QuietFor (forwarded requests are proof enough, so an idle
// fleet costs the apiserver no probes); offline or not yet known, it
// always probes, to notice the apiserver coming back.
func TestProbeOnlyWhenQuiet(t *testing.T) {
	p := &Proxy{cfg: Config{QuietFor: 15 * time.Second}}
	now := time.Now()
	for _, tc := range []struct {
		name          string
		known, online bool
		last          time.Time
		want          bool
	}{
		{"not probed yet", false, false, time.Time{}, true},
		{"offline", true, false, now.Add(-time.Second), true},
		{"online, answered 1 s ago", true, true, now.Add(-time.Second), false},
		{"online, answered 14 s ago", true, true, now.Add(-14 * time.Second), false},
		{"online, quiet for 15 s", true, true, now.Add(-15 * time.Second), true},
		{"online, never answered", true, true, time.Time{}, true},
	} {
		p.known, p.online, p.lastContact = tc.known, tc.online, tc.last
		if got := p.needProbe(now); got != tc.want {
			t.Errorf("%s: needProbe = %v, want %v", tc.name, got, tc.want)
		}
	}
}
