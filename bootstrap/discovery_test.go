package bootstrap

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
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

const (
	tokenID     = "abcdef"
	tokenSecret = "0123456789abcdef"
	token       = tokenID + "." + tokenSecret
)

// clusterInfoServer serves kube-public/cluster-info the way kube-apiserver
// does after kubeadm init, signed for tokenID with signSecret.
func clusterInfoServer(t *testing.T, signSecret string, tamper bool) (*httptest.Server, string) {
	t.Helper()
	var kc string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/namespaces/kube-public/configmaps/cluster-info" {
			http.NotFound(w, r)
			return
		}
		sig, err := jws.ComputeDetachedSignature(kc, tokenID, signSecret)
		if err != nil {
			t.Error(err)
		}
		data := kc
		if tamper {
			data = strings.Replace(kc, "server:", "server: ", 1) + "\n# tampered"
		}
		cm := corev1.ConfigMap{
			TypeMeta:   metav1.TypeMeta{Kind: "ConfigMap", APIVersion: "v1"},
			ObjectMeta: metav1.ObjectMeta{Name: "cluster-info", Namespace: "kube-public"},
			Data:       map[string]string{"kubeconfig": data, "jws-kubeconfig-" + tokenID: sig},
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(&cm)
	}))
	t.Cleanup(srv.Close)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[""] = &clientcmdapi.Cluster{Server: srv.URL, CertificateAuthorityData: caPEM}
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	kc = string(b)
	return srv, pubkeypin.Hash(srv.Certificate())
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestDiscoverSuccess(t *testing.T) {
	srv, pin := clusterInfoServer(t, tokenSecret, false)
	cfg, err := Discover(ctx(t), &Material{APIServer: srv.URL, Token: token, CACertHashes: []string{pin}})
	if err != nil {
		t.Fatal(err)
	}
	c := firstCluster(cfg)
	if c.Server != srv.URL || len(c.CertificateAuthorityData) == 0 {
		t.Fatalf("cluster = %+v", c)
	}
	if cfg.AuthInfos[BootstrapUser].Token != token {
		t.Fatal("bootstrap kubeconfig does not carry the token")
	}
}

func TestDiscoverWrongPinNamesBoth(t *testing.T) {
	srv, pin := clusterInfoServer(t, tokenSecret, false)
	wrong := "sha256:" + strings.Repeat("ab", 32)
	_, err := Discover(ctx(t), &Material{APIServer: srv.URL, Token: token, CACertHashes: []string{wrong}})
	if err == nil || !IsPermanent(err) {
		t.Fatalf("err = %v, want permanent", err)
	}
	if !strings.Contains(err.Error(), wrong) || !strings.Contains(err.Error(), pin) {
		t.Fatalf("error %q must name expected %s and actual %s", err, wrong, pin)
	}
}

func TestDiscoverWrongSecret(t *testing.T) {
	srv, pin := clusterInfoServer(t, "ffffffffffffffff", false)
	_, err := Discover(ctx(t), &Material{APIServer: srv.URL, Token: token, CACertHashes: []string{pin}})
	if err == nil || !IsPermanent(err) || !strings.Contains(err.Error(), "wrong token secret") {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), tokenSecret) {
		t.Fatal("error leaks the token secret")
	}
}

// An unknown token id may still get its signature (the bootstrapsigner is
// late), so it is retried for the window and then reported as retryable.
func TestDiscoverUnknownTokenIDRetriedForTheWindow(t *testing.T) {
	srv, pin := clusterInfoServer(t, tokenSecret, false)
	o := DiscoveryOptions{Window: 300 * time.Millisecond, Interval: 20 * time.Millisecond}
	var retries int
	o.OnRetry = func(error) { retries++ }
	_, err := o.Discover(ctx(t), &Material{APIServer: srv.URL, Token: "zzzzzz." + tokenSecret, CACertHashes: []string{pin}})
	if err == nil || IsPermanent(err) || !strings.Contains(err.Error(), `"zzzzzz" is unknown`) || !strings.Contains(err.Error(), "still failing after") {
		t.Fatalf("err = %v, want a retryable unknown-token error after the window", err)
	}
	if retries < 2 {
		t.Fatalf("%d retries within the window, want several", retries)
	}
}

func TestDiscoverTamperedClusterInfo(t *testing.T) {
	srv, pin := clusterInfoServer(t, tokenSecret, true)
	_, err := Discover(ctx(t), &Material{APIServer: srv.URL, Token: token, CACertHashes: []string{pin}})
	if err == nil || !IsPermanent(err) {
		t.Fatalf("err = %v, want permanent", err)
	}
}

func TestDiscoverUnreachableIsRetryable(t *testing.T) {
	srv, pin := clusterInfoServer(t, tokenSecret, false)
	url := srv.URL
	srv.Close()
	_, err := DiscoveryOptions{Window: 200 * time.Millisecond, Interval: 50 * time.Millisecond}.Discover(ctx(t), &Material{APIServer: url, Token: token, CACertHashes: []string{pin}})
	if err == nil || IsPermanent(err) {
		t.Fatalf("err = %v, want a retryable error", err)
	}
}

func TestValidate(t *testing.T) {
	pin := "sha256:" + strings.Repeat("01", 32)
	cases := map[string]Material{
		"no token":       {APIServer: "https://h:6443", CACertHashes: []string{pin}},
		"bad token":      {APIServer: "https://h:6443", Token: "ABC.def", CACertHashes: []string{pin}},
		"no pin":         {APIServer: "https://h:6443", Token: token},
		"bad pin":        {APIServer: "https://h:6443", Token: token, CACertHashes: []string{"md5:00"}},
		"http url":       {APIServer: "http://h:6443", Token: token, CACertHashes: []string{pin}},
		"both":           {APIServer: "https://h:6443", Token: token, Kubeconfig: "apiVersion: v1"},
		"bad kubeconfig": {Kubeconfig: "{{{"},
	}
	for name, m := range cases {
		if err := m.Validate(); err == nil || !IsPermanent(err) {
			t.Errorf("%s: err = %v, want permanent", name, err)
		}
	}
	ok := Material{APIServer: "https://h:6443", Token: token, CACertHashes: []string{pin}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestPrepareWritesNothingOnWrongPin(t *testing.T) {
	srv, _ := clusterInfoServer(t, tokenSecret, false)
	s := Store{Dir: t.TempDir() + "/creds"}
	_, err := s.Prepare(ctx(t), &Material{APIServer: srv.URL, Token: token, CACertHashes: []string{"sha256:" + strings.Repeat("cd", 32)}}, time.Now())
	if err == nil {
		t.Fatal("expected error")
	}
	if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
		t.Fatalf("credential dir exists after a refused join: %v", err)
	}
}

func TestPrepareWritesBootstrapKubeconfig0600(t *testing.T) {
	srv, pin := clusterInfoServer(t, tokenSecret, false)
	s := Store{Dir: t.TempDir() + "/creds"}
	out, err := s.Prepare(ctx(t), &Material{APIServer: srv.URL, Token: token, CACertHashes: []string{pin}}, time.Now())
	if err != nil || out != Bootstrapped {
		t.Fatalf("out=%v err=%v", out, err)
	}
	for _, p := range []string{s.BootstrapKubeconfigPath(), s.ClusterCAPath()} {
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", p, st, err)
		}
	}
	rec, err := s.Record()
	if err != nil || rec.APIServer != srv.URL || rec.CAPin != pin {
		t.Fatalf("record = %+v, %v", rec, err)
	}
}

func TestDiscoverCABundleHash(t *testing.T) {
	srv, _ := clusterInfoServer(t, tokenSecret, false)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	sum := sha256.Sum256(caPEM)
	good := "sha256:" + hex.EncodeToString(sum[:])
	if _, err := Discover(ctx(t), &Material{APIServer: srv.URL, Token: token, CABundleHashes: []string{good}}); err != nil {
		t.Fatal(err)
	}
	wrong := "sha256:" + strings.Repeat("0", 64)
	_, err := Discover(ctx(t), &Material{APIServer: srv.URL, Token: token, CABundleHashes: []string{wrong}})
	if err == nil || !IsPermanent(err) || !strings.Contains(err.Error(), wrong) || !strings.Contains(err.Error(), good) {
		t.Fatalf("err = %v, want a permanent error naming %s and %s", err, wrong, good)
	}
}
