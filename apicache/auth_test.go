package apicache

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// TestLoopbackIdentity: only a caller holding the key of the client's
// current certificate is forwarded, with the client's upstream credentials
// and without the caller's Authorization or impersonation headers; a
// rotated certificate is followed; another certificate gets 401.
func TestLoopbackIdentity(t *testing.T) {
	dir := t.TempDir()
	var gotAuth, gotImp string
	var gotCert []byte
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth, gotImp = r.Header.Get("Authorization"), r.Header.Get("Impersonate-User")
		if len(r.TLS.PeerCertificates) > 0 {
			gotCert = r.TLS.PeerCertificates[0].Raw
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"kind":"Status","apiVersion":"v1","status":"Success"}`)
	}))
	up.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	up.StartTLS()
	defer up.Close()

	nodePEM := filepath.Join(dir, "kubelet-client-current.pem")
	node1 := writePair(t, nodePEM)
	kc := filepath.Join(dir, "kubeconfig")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw})
	if err := clientcmd.WriteToFile(clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"c": {Server: up.URL, CertificateAuthorityData: caPEM}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"u": {ClientCertificate: nodePEM, ClientKey: nodePEM}},
		Contexts:       map[string]*clientcmdapi.Context{"x": {Cluster: "c", AuthInfo: "u"}},
		CurrentContext: "x",
	}, kc); err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Dir: filepath.Join(dir, "cache"), Clients: []Client{{Name: "kubelet", Kubeconfig: kc}}, Log: logrus.NewEntry(logrus.StandardLogger())})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx) }()
	defer func() { cancel(); <-done }()

	call := func(cert *tls.Certificate) (int, error) {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(p.caPEM)
		tc := &tls.Config{RootCAs: pool}
		if cert != nil {
			tc.Certificates = []tls.Certificate{*cert}
		}
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
		req, _ := http.NewRequest(http.MethodGet, "https://"+p.Addr()+"/api/v1/namespaces/default/configmaps/x", nil)
		req.Header.Set("Authorization", "Bearer stolen")
		req.Header.Set("Impersonate-User", "system:admin")
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := call(&node1); err != nil || code != http.StatusOK {
		t.Fatalf("the node's own certificate: %d %v", code, err)
	}
	if gotAuth != "" || gotImp != "" {
		t.Errorf("forwarded the caller's headers: Authorization %q, Impersonate-User %q", gotAuth, gotImp)
	}
	if string(gotCert) != string(node1.Certificate[0]) {
		t.Error("upstream did not see the node's client certificate")
	}
	other := writePair(t, filepath.Join(dir, "other.pem"))
	if code, err := call(&other); err != nil || code != http.StatusUnauthorized {
		t.Errorf("another certificate: %d %v, want 401", code, err)
	}
	if code, err := call(nil); err == nil {
		t.Errorf("no certificate: answered %d, want a refused handshake", code)
	}
	// Rotation: the file now holds a new key; the old one is refused.
	node2 := writePair(t, nodePEM)
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		code, err := call(&node2)
		return err == nil && code == http.StatusOK, nil
	}); err != nil {
		t.Fatal("rotated certificate not accepted")
	}
	if code, err := call(&node1); err != nil || code != http.StatusUnauthorized {
		t.Errorf("the certificate rotated away: %d %v, want 401", code, err)
	}
	if string(gotCert) != string(node2.Certificate[0]) {
		t.Error("upstream did not see the rotated certificate")
	}
}

// writePair writes a fresh self-signed client certificate and key to path
// (one PEM file, as the kubelet's) and returns it.
func writePair(t *testing.T, path string) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "system:node:n"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd})
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(certPEM, keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
