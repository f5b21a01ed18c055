package bootstrap

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/cluster-bootstrap/token/jws"
	"k8s.io/kubernetes/cmd/kubeadm/app/util/pubkeypin"
)

// cluster is a TLS apiserver stand-in with its own self-signed CA, serving
// signed cluster-info, at a given address (so it can be "rebuilt" there).
type cluster struct {
	srv   *httptest.Server
	caPEM []byte
	pin   string
}

func selfSigned(t *testing.T) (tls.Certificate, *x509.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func startCluster(t *testing.T, addr string) *cluster {
	t.Helper()
	tc, cert, caPEM := selfSigned(t)
	c := &cluster{caPEM: caPEM, pin: pubkeypin.Hash(cert)}
	var kc string
	c.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sig, _ := jws.ComputeDetachedSignature(kc, tokenID, tokenSecret)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(&corev1.ConfigMap{
			TypeMeta:   metav1.TypeMeta{Kind: "ConfigMap", APIVersion: "v1"},
			ObjectMeta: metav1.ObjectMeta{Name: "cluster-info", Namespace: "kube-public"},
			Data:       map[string]string{"kubeconfig": kc, "jws-kubeconfig-" + tokenID: sig},
		})
	}))
	if addr != "" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.srv.Listener.Close()
		c.srv.Listener = l
	}
	c.srv.TLS = &tls.Config{Certificates: []tls.Certificate{tc}}
	c.srv.StartTLS()
	t.Cleanup(c.srv.Close)
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[""] = &clientcmdapi.Cluster{Server: c.srv.URL, CertificateAuthorityData: caPEM}
	b, _ := clientcmd.Write(*cfg)
	kc = string(b)
	return c
}

func (c *cluster) material(tok string) *Material {
	return &Material{APIServer: c.srv.URL, Token: tok, CACertHashes: []string{c.pin}}
}

// fakeClient writes the kubeconfig the kubelet would write after its CSR
// was approved, so Prepare sees valid client credentials.
func fakeClient(t *testing.T, s Store, server string, caPEM []byte) {
	t.Helper()
	tc, _, certPEM := selfSigned(t)
	keyDER, _ := x509.MarshalECPrivateKey(tc.PrivateKey.(*ecdsa.PrivateKey))
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})}
	cfg.Contexts["x"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	cfg.CurrentContext = "x"
	if err := clientcmd.WriteToFile(*cfg, s.KubeconfigPath()); err != nil {
		t.Fatal(err)
	}
}

// TestPrepareRebuiltClusterAtSameAddress: a cluster rebuilt at the same URL
// has a new CA; credentials for the old one must not be reused (before: the
// URL alone decided, and the kubelet was left trusting the old CA).
func TestPrepareRebuiltClusterAtSameAddress(t *testing.T) {
	a := startCluster(t, "127.0.0.1:0")
	s := Store{Dir: filepath.Join(t.TempDir(), "creds")}
	if out, err := s.Prepare(ctx(t), a.material(token), time.Now()); err != nil || out != Bootstrapped {
		t.Fatalf("first join: %v %v", out, err)
	}
	fakeClient(t, s, a.srv.URL, a.caPEM)
	if out, err := s.Prepare(ctx(t), a.material(token), time.Now()); err != nil || out != Reused {
		t.Fatalf("same cluster again: %v %v, want reused", out, err)
	}

	addr := a.srv.Listener.Addr().String()
	a.srv.Close()
	b := startCluster(t, addr)
	if b.srv.URL != a.srv.URL || b.pin == a.pin {
		t.Fatalf("rebuilt cluster %s (%s) is not at %s with a new CA", b.srv.URL, b.pin, a.srv.URL)
	}
	if held, err := s.Holds(b.material(token)); err != nil || held {
		t.Fatalf("Holds(rebuilt cluster) = %v, %v; want false", held, err)
	}
	out, err := s.Prepare(ctx(t), b.material(token), time.Now())
	if err != nil || out != Bootstrapped {
		t.Fatalf("rebuilt cluster: %v %v, want bootstrapped", out, err)
	}
	ca, _ := os.ReadFile(s.ClusterCAPath())
	rec, _ := s.Record()
	if string(ca) != string(b.caPEM) || rec == nil || rec.CAPin != b.pin {
		t.Fatalf("after rejoin: ca.crt is the new CA: %v; record %+v", string(ca) == string(b.caPEM), rec)
	}
	if _, err := os.Stat(s.KubeconfigPath()); !os.IsNotExist(err) {
		t.Fatalf("old client kubeconfig kept: %v", err)
	}
}

// TestPrepareTokenOnlyChangeReuses: a new token for the same cluster needs
// no discovery (the cluster is not even asked).
func TestPrepareTokenOnlyChangeReuses(t *testing.T) {
	a := startCluster(t, "127.0.0.1:0")
	s := Store{Dir: filepath.Join(t.TempDir(), "creds")}
	if _, err := s.Prepare(ctx(t), a.material(token), time.Now()); err != nil {
		t.Fatal(err)
	}
	fakeClient(t, s, a.srv.URL, a.caPEM)
	a.srv.Close()
	if out, err := s.Prepare(ctx(t), a.material("qwerty.0123456789qwerty"), time.Now()); err != nil || out != Reused {
		t.Fatalf("token-only change: %v %v, want reused", out, err)
	}
}

// TestHoldsComparesEveryPinKind: SPKI pins, k3s bundle hashes and a
// kubeconfig's CA all identify the cluster.
func TestHoldsComparesEveryPinKind(t *testing.T) {
	a := startCluster(t, "127.0.0.1:0")
	_, otherCert, otherPEM := selfSigned(t)
	s := Store{Dir: filepath.Join(t.TempDir(), "creds")}
	if _, err := s.Prepare(ctx(t), a.material(token), time.Now()); err != nil {
		t.Fatal(err)
	}
	bundle := func(b []byte) string { s := sha256.Sum256(b); return "sha256:" + hex.EncodeToString(s[:]) }
	kubeconfig := func(server string, ca []byte) string {
		cfg := clientcmdapi.NewConfig()
		cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
		cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "t"}
		cfg.Contexts["x"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
		cfg.CurrentContext = "x"
		b, _ := clientcmd.Write(*cfg)
		return string(b)
	}
	url := a.srv.URL
	for name, c := range map[string]struct {
		m    Material
		want bool
	}{
		"same pin":           {Material{APIServer: url, Token: token, CACertHashes: []string{a.pin}}, true},
		"other pin":          {Material{APIServer: url, Token: token, CACertHashes: []string{pubkeypin.Hash(otherCert)}}, false},
		"one of two pins":    {Material{APIServer: url, Token: token, CACertHashes: []string{pubkeypin.Hash(otherCert), a.pin}}, true},
		"same bundle":        {Material{APIServer: url, Token: token, CABundleHashes: []string{bundle(a.caPEM)}}, true},
		"other bundle":       {Material{APIServer: url, Token: token, CABundleHashes: []string{bundle(otherPEM)}}, false},
		"kubeconfig same CA": {Material{Kubeconfig: kubeconfig(url, a.caPEM)}, true},
		"kubeconfig new CA":  {Material{Kubeconfig: kubeconfig(url, otherPEM)}, false},
		"other server":       {Material{APIServer: "https://127.0.0.2:6443", Token: token, CACertHashes: []string{a.pin}}, false},
	} {
		if got, err := s.Holds(&c.m); err != nil || got != c.want {
			t.Errorf("%s: Holds = %v, %v; want %v", name, got, err, c.want)
		}
	}
}

// TestWriteIsAllOrNothing: a credential write that fails half way must not
// leave one cluster's record next to another cluster's files (before: the
// old join.json survived next to the new ca.crt).
func TestWriteIsAllOrNothing(t *testing.T) {
	a := startCluster(t, "127.0.0.1:0")
	b := startCluster(t, "127.0.0.1:0")
	s := Store{Dir: filepath.Join(t.TempDir(), "creds")}
	if _, err := s.Prepare(ctx(t), a.material(token), time.Now()); err != nil {
		t.Fatal(err)
	}
	// Make the bootstrap kubeconfig unwritable: a non-empty directory in
	// its place defeats the rename.
	os.Remove(s.BootstrapKubeconfigPath())
	os.MkdirAll(filepath.Join(s.BootstrapKubeconfigPath(), "x"), 0o700)
	if _, err := s.Prepare(ctx(t), b.material(token), time.Now()); err == nil {
		t.Fatal("Prepare succeeded with an unwritable bootstrap kubeconfig")
	}
	rec, err := s.Record()
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := os.ReadFile(s.ClusterCAPath())
	if rec != nil && (rec.APIServer != a.srv.URL || string(ca) != string(a.caPEM)) {
		t.Fatalf("torn credential set: record for %s (pin %s) next to ca.crt of %s", rec.APIServer, rec.CAPin, map[bool]string{true: "the new cluster", false: "?"}[string(ca) == string(b.caPEM)])
	}
	if rec != nil {
		if held, _ := s.Holds(b.material(token)); held {
			t.Fatal("store claims to hold the cluster whose write failed")
		}
	}
}

// TestAmbiguousKubeconfigRefused: several clusters and no current-context
// would make the server (and the leave decision) depend on map order.
func TestAmbiguousKubeconfigRefused(t *testing.T) {
	cfg := clientcmdapi.NewConfig()
	for _, n := range []string{"a", "b", "c"} {
		cfg.Clusters[n] = &clientcmdapi.Cluster{Server: "https://" + n + ".example:6443"}
		cfg.AuthInfos[n] = &clientcmdapi.AuthInfo{Token: "t"}
		cfg.Contexts[n] = &clientcmdapi.Context{Cluster: n, AuthInfo: n}
	}
	b, _ := clientcmd.Write(*cfg)
	m := Material{Kubeconfig: string(b)}
	if err := m.Validate(); err == nil || !IsPermanent(err) || !strings.Contains(err.Error(), "current-context") {
		t.Fatalf("Validate = %v, want a permanent error asking for current-context", err)
	}
	if s := m.Server(); s != "" {
		t.Fatalf("Server() = %q for an ambiguous kubeconfig, want \"\"", s)
	}
	cfg.CurrentContext = "b"
	b, _ = clientcmd.Write(*cfg)
	m = Material{Kubeconfig: string(b)}
	if err := m.Validate(); err != nil || m.Server() != "https://b.example:6443" {
		t.Fatalf("with current-context: %v, %q", err, m.Server())
	}
}
