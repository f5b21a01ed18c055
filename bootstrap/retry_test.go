package bootstrap

import (
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/cluster-bootstrap/token/jws"
	"k8s.io/kubernetes/cmd/kubeadm/app/util/pubkeypin"
)

// lateServer is an apiserver that is still coming up: for each request
// number n (from 1) it answers what phase(n) says, then the signed
// cluster-info.
type phase int

const (
	ready       phase = iota
	notFound          // no cluster-info yet
	forbidden         // RBAC for anonymous reads not there yet
	unsigned          // cluster-info without the token's JWS signature
	hang              // never answers (until the client gives up)
	serverError       // 503
)

func lateServer(t *testing.T, phaseOf func(n int64) phase) (*httptest.Server, string, *atomic.Int64) {
	t.Helper()
	var kc string
	var n atomic.Int64
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/namespaces/kube-public/configmaps/cluster-info" {
			http.NotFound(w, r)
			return
		}
		status := func(code int, reason metav1.StatusReason) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			json.NewEncoder(w).Encode(&metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: "Failure", Code: int32(code), Reason: reason})
		}
		data := map[string]string{"kubeconfig": kc}
		switch phaseOf(n.Add(1)) {
		case notFound:
			status(http.StatusNotFound, metav1.StatusReasonNotFound)
			return
		case forbidden:
			status(http.StatusForbidden, metav1.StatusReasonForbidden)
			return
		case serverError:
			status(http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable)
			return
		case hang:
			<-r.Context().Done()
			return
		case unsigned:
		case ready:
			sig, err := jws.ComputeDetachedSignature(kc, tokenID, tokenSecret)
			if err != nil {
				t.Error(err)
			}
			data["jws-kubeconfig-"+tokenID] = sig
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(&corev1.ConfigMap{
			TypeMeta:   metav1.TypeMeta{Kind: "ConfigMap", APIVersion: "v1"},
			ObjectMeta: metav1.ObjectMeta{Name: "cluster-info", Namespace: "kube-public"},
			Data:       data,
		})
	}))
	t.Cleanup(srv.Close)
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[""] = &clientcmdapi.Cluster{Server: srv.URL, CertificateAuthorityData: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})}
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	kc = string(b)
	return srv, pubkeypin.Hash(srv.Certificate()), &n
}

// TestDiscoverWaitsForLateSignature: the bootstrapsigner signs cluster-info
// some time after the token exists; discovery keeps asking and succeeds once
// the signature is there (before: "unknown token", permanent, at once).
func TestDiscoverWaitsForLateSignature(t *testing.T) {
	for name, early := range map[string]phase{
		"signature":    unsigned,
		"cluster-info": notFound,
		"rbac":         forbidden,
		"apiserver":    serverError,
	} {
		t.Run(name, func(t *testing.T) {
			srv, pin, n := lateServer(t, func(n int64) phase {
				if n <= 3 {
					return early
				}
				return ready
			})
			var seen []string
			o := DiscoveryOptions{Window: 20 * time.Second, Interval: 10 * time.Millisecond,
				OnRetry: func(err error) { seen = append(seen, err.Error()) }}
			cfg, err := o.Discover(ctx(t), &Material{APIServer: srv.URL, Token: token, CACertHashes: []string{pin}})
			if err != nil {
				t.Fatalf("discovery gave up: %v (after %d requests)", err, n.Load())
			}
			if firstCluster(cfg).Server != srv.URL {
				t.Fatalf("bootstrap kubeconfig for %q", firstCluster(cfg).Server)
			}
			if len(seen) != 3 {
				t.Fatalf("retries %q, want 3", seen)
			}
		})
	}
}

// TestDiscoverRequestTimeout: a server that accepts and never answers costs
// one request timeout, not the window.
func TestDiscoverRequestTimeout(t *testing.T) {
	srv, pin, _ := lateServer(t, func(n int64) phase {
		if n == 1 {
			return hang
		}
		return ready
	})
	o := DiscoveryOptions{Window: 20 * time.Second, Interval: 10 * time.Millisecond, RequestTimeout: 300 * time.Millisecond}
	start := time.Now()
	if _, err := o.Discover(ctx(t), &Material{APIServer: srv.URL, Token: token, CACertHashes: []string{pin}}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Fatalf("discovery took %v with a hanging first request", d)
	}
}

// TestDiscoverPermanentErrorsEndAtOnce: a wrong secret or pin is not worth
// the window.
func TestDiscoverPermanentErrorsEndAtOnce(t *testing.T) {
	srv, _, n := lateServer(t, func(int64) phase { return ready })
	o := DiscoveryOptions{Window: time.Minute, Interval: 10 * time.Millisecond}
	_, err := o.Discover(ctx(t), &Material{APIServer: srv.URL, Token: tokenID + ".ffffffffffffffff", CACertHashes: []string{"sha256:" + strings.Repeat("ab", 32)}})
	if !IsPermanent(err) || n.Load() != 1 {
		t.Fatalf("err = %v after %d requests, want a permanent error after 1", err, n.Load())
	}
}
