package controlplane

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	"k8s.io/cluster-bootstrap/token/jws"
	"k8s.io/kubernetes/cmd/kubeadm/app/util/pubkeypin"
)

// TestControlPlane runs the real thing: etcd, apiserver, controller-manager
// and scheduler, then exercises what a joining node relies on.
func TestControlPlane(t *testing.T) {
	binDir, err := EnsureBinaries(os.Getenv("KUBE_BIN_DIR"))
	if err != nil {
		t.Skipf("control-plane binaries are missing and could not be built: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	dir := t.TempDir()
	c, err := Prepare(Options{Dir: dir, BinDir: binDir, NodeMonitorGracePeriod: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range []string{Etcd, APIServer, ControllerManager, Scheduler} {
				t.Logf("--- tail of %s ---\n%s", c.LogPath(n), logTail(c.LogPath(n)))
			}
		}
		if err := c.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	// Before Run, the device could already be given URL and pin; nothing
	// answers yet.
	if _, err := c.Client().CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err == nil {
		t.Fatal("apiserver answers before Run")
	}

	start := time.Now()
	if err := c.Run(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("time to ready: %v (phases: %v)", time.Since(start).Round(time.Millisecond), roundAll(c.Timings()))
	t.Logf("processes: %v", c.Processes())

	t.Run("admin", func(t *testing.T) {
		nss, err := c.Client().CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, ns := range nss.Items {
			names = append(names, ns.Name)
		}
		for _, want := range []string{"default", "kube-system", "kube-public", "kube-node-lease"} {
			if !strings.Contains(" "+strings.Join(names, " ")+" ", " "+want+" ") {
				t.Errorf("namespace %s missing from %v", want, names)
			}
		}
		out, err := c.Kubectl(ctx, "get", "--raw", "/version")
		if err != nil || !strings.Contains(out, `"gitVersion"`) {
			t.Errorf("kubectl: %v: %s", err, out)
		}
		if _, err := c.Kubectl(ctx, "auth", "can-i", "create", "pods", "--all-namespaces"); err != nil {
			t.Errorf("admin is not cluster-admin: %v", err)
		}
	})

	var token string
	t.Run("bootstrap token", func(t *testing.T) {
		t0 := time.Now()
		token, err = c.CreateBootstrapToken(ctx, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("token created and signed into cluster-info in %v", time.Since(t0).Round(time.Millisecond))
		id, secret, _ := strings.Cut(token, ".")
		s, err := c.Client().CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, "bootstrap-token-"+id, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if s.Type != bootstrapapi.SecretTypeBootstrapToken || string(s.Data["token-secret"]) != secret ||
			string(s.Data["usage-bootstrap-authentication"]) != "true" || string(s.Data["usage-bootstrap-signing"]) != "true" ||
			string(s.Data["auth-extra-groups"]) != NodeBootstrapTokenGroup {
			t.Errorf("token secret: type %s data %q", s.Type, s.Data)
		}
		if exp, err := time.Parse(time.RFC3339, string(s.Data["expiration"])); err != nil || time.Until(exp) < 59*time.Minute {
			t.Errorf("expiration %q: %v", s.Data["expiration"], err)
		}
	})
	if token == "" {
		t.FailNow()
	}
	id, secret, _ := strings.Cut(token, ".")

	t.Run("anonymous discovery", func(t *testing.T) {
		anon := kubernetes.NewForConfigOrDie(&rest.Config{Host: c.URL(), TLSClientConfig: rest.TLSClientConfig{Insecure: true}})
		cm, err := anon.CoreV1().ConfigMaps(metav1.NamespacePublic).Get(ctx, bootstrapapi.ConfigMapClusterInfo, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sig, ok := cm.Data[bootstrapapi.JWSSignatureKeyPrefix+id]
		if !ok {
			t.Fatalf("cluster-info has no signature for %s: keys %v", id, keys(cm.Data))
		}
		kc := cm.Data[bootstrapapi.KubeConfigKey]
		if !jws.DetachedTokenIsValid(sig, kc, id, secret) {
			t.Error("cluster-info signature does not verify with the token")
		}
		cfg, err := clientcmd.Load([]byte(kc))
		if err != nil {
			t.Fatal(err)
		}
		cl := cfg.Clusters[""]
		if cl == nil || cl.Server != c.AdvertiseURL() {
			t.Fatalf("cluster-info clusters: %v", cfg.Clusters)
		}
		block, _ := pem.Decode(cl.CertificateAuthorityData)
		ca, err := x509.ParseCertificate(block.Bytes)
		if err != nil || pubkeypin.Hash(ca) != c.CAPin() {
			t.Errorf("cluster-info CA pin %s, want %s (%v)", pubkeypin.Hash(ca), c.CAPin(), err)
		}
		if _, err := anon.CoreV1().Secrets(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("anonymous list of secrets: %v, want Forbidden", err)
		}
	})

	bootCfg := &rest.Config{Host: c.URL(), BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: c.CACertPEM()}}
	t.Run("CSR auto-approval", func(t *testing.T) {
		boot := kubernetes.NewForConfigOrDie(bootCfg)
		// kubeadm:get-nodes lets the token look nodes up.
		if _, err := boot.CoreV1().Nodes().Get(ctx, "test-node", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("bootstrap token get node: %v, want NotFound", err)
		}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
			Subject: pkix.Name{CommonName: "system:node:test-node", Organization: []string{"system:nodes"}},
		}, key)
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		csr, err := boot.CertificatesV1().CertificateSigningRequests().Create(ctx, &certificatesv1.CertificateSigningRequest{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "node-csr-"},
			Spec: certificatesv1.CertificateSigningRequestSpec{
				Request:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
				SignerName: certificatesv1.KubeAPIServerClientKubeletSignerName,
				Usages:     []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var issued []byte
		err = c.poll(ctx, time.Minute, "CSR "+csr.Name+" approved and issued", func(ctx context.Context) error {
			got, err := c.Client().CertificatesV1().CertificateSigningRequests().Get(ctx, csr.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			approved := false
			for _, cond := range got.Status.Conditions {
				if cond.Type == certificatesv1.CertificateDenied || cond.Type == certificatesv1.CertificateFailed {
					return fmt.Errorf("CSR %s: %s", cond.Type, cond.Message)
				}
				approved = approved || cond.Type == certificatesv1.CertificateApproved
			}
			if !approved || len(got.Status.Certificate) == 0 {
				return fmt.Errorf("approved %v, certificate %d bytes", approved, len(got.Status.Certificate))
			}
			issued = got.Status.Certificate
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("CSR approved and issued in %v", time.Since(t0).Round(time.Millisecond))
		block, _ := pem.Decode(issued)
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AddCert(c.CACert())
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("issued certificate: %v", err)
		}
		if cert.Subject.CommonName != "system:node:test-node" {
			t.Errorf("issued subject %v", cert.Subject)
		}
		// The node credential works and is the node.
		keyDER, _ := x509.MarshalECPrivateKey(key)
		node := kubernetes.NewForConfigOrDie(&rest.Config{Host: c.URL(), TLSClientConfig: rest.TLSClientConfig{
			CAData: c.CACertPEM(), CertData: issued, KeyData: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		}})
		ssr, err := node.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil || ssr.Status.UserInfo.Username != "system:node:test-node" {
			t.Errorf("node identity: %v %v", ssr, err)
		}
	})

	t.Run("apiserver restart", func(t *testing.T) {
		before := c.Processes()
		t0 := time.Now()
		if err := c.StopAPIServer(); err != nil {
			t.Fatal(err)
		}
		t.Logf("apiserver stopped in %v", time.Since(t0).Round(time.Millisecond))
		if PIDAlive(before[APIServer]) {
			t.Errorf("apiserver pid %d alive after StopAPIServer", before[APIServer])
		}
		if _, ok := c.Processes()[APIServer]; ok {
			t.Error("Processes still lists the apiserver")
		}
		if _, err := http.Get(c.URL()); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("apiserver port while stopped: %v", err)
		}
		for _, n := range []string{Etcd, ControllerManager, Scheduler} {
			if c.Processes()[n] != before[n] {
				t.Errorf("%s changed: %d -> %d", n, before[n], c.Processes()[n])
			}
		}
		t0 = time.Now()
		if err := c.StartAPIServer(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("apiserver restarted and ready in %v", time.Since(t0).Round(time.Millisecond))
		if _, err := c.Client().CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
		// The controller-manager is back at work: a new token gets signed.
		t0 = time.Now()
		tok2, err := c.CreateBootstrapToken(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("token after restart signed in %v", time.Since(t0).Round(time.Millisecond))
		if err := c.DeleteBootstrapToken(ctx, tok2); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("delete token", func(t *testing.T) {
		if err := c.DeleteBootstrapToken(ctx, id); err != nil {
			t.Fatal(err)
		}
		boot := kubernetes.NewForConfigOrDie(bootCfg)
		err := c.poll(ctx, 30*time.Second, "deleted token to stop authenticating", func(ctx context.Context) error {
			_, err := boot.CoreV1().Nodes().Get(ctx, "test-node", metav1.GetOptions{})
			if apierrors.IsUnauthorized(err) {
				return nil
			}
			return fmt.Errorf("got %v", err)
		})
		if err != nil {
			t.Error(err)
		}
		if err := c.DeleteBootstrapToken(ctx, id); err != nil {
			t.Errorf("deleting again: %v", err)
		}
	})

	t.Run("stop", func(t *testing.T) {
		procs := c.Processes()
		if len(procs) != 4 {
			t.Errorf("processes: %v", procs)
		}
		t0 := time.Now()
		if err := c.Stop(); err != nil {
			t.Fatal(err)
		}
		t.Logf("stopped in %v", time.Since(t0).Round(time.Millisecond))
		for n, pid := range procs {
			if PIDAlive(pid) {
				t.Errorf("%s (pid %d) alive after Stop", n, pid)
			}
		}
		if m, _ := filepath.Glob(filepath.Join(c.Dir(), "pids", "*")); len(m) != 0 {
			t.Errorf("pid files left: %v", m)
		}
		if len(c.Processes()) != 0 {
			t.Errorf("Processes after Stop: %v", c.Processes())
		}
		if err := c.Stop(); err != nil {
			t.Errorf("second Stop: %v", err)
		}
	})

	t.Run("rerun on the same dir, then leftovers", func(t *testing.T) {
		// Run again on the kept etcd data (a demo restarted on its
		// directory): the kubeadm objects exist already.
		t0 := time.Now()
		if err := c.Run(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("second Run ready in %v", time.Since(t0).Round(time.Millisecond))
		if _, err := c.CreateBootstrapToken(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
		// Pretend the test crashed: a new Prepare on the directory finds
		// and kills what the old one left running.
		left := c.Processes()
		c2, err := Prepare(Options{Dir: dir, BinDir: binDir})
		if err != nil {
			t.Fatal(err)
		}
		for n, pid := range left {
			if PIDAlive(pid) {
				t.Errorf("leftover %s (pid %d) survived Prepare", n, pid)
			}
		}
		if c2.CAPin() != c.CAPin() {
			t.Errorf("CA pin changed across Prepare on the same dir")
		}
		if err := c.Stop(); err != nil {
			t.Errorf("Stop after the processes were killed: %v", err)
		}
	})
}

func keys(m map[string]string) []string {
	var k []string
	for key := range m {
		k = append(k, key)
	}
	return k
}

func roundAll(m map[string]time.Duration) map[string]time.Duration {
	for k, v := range m {
		m[k] = v.Round(time.Millisecond)
	}
	return m
}
