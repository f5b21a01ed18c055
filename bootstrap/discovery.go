package bootstrap

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	"k8s.io/cluster-bootstrap/token/jws"
	"k8s.io/kubernetes/cmd/kubeadm/app/util/pubkeypin"
)

// BootstrapUser names the token user inside the bootstrap kubeconfig.
const BootstrapUser = "tls-bootstrap-token-user"

// DiscoveryOptions bound token discovery's retries. Like kubeadm's
// (cmd/kubeadm/app/discovery/token: 5 s interval, 5 min window), discovery
// keeps asking while the answer can still change by itself: the
// bootstrapsigner adds a new token's JWS signature to cluster-info some time
// after the token is created, RBAC for anonymous reads may not exist yet on a
// cluster that is still coming up, and the apiserver may be unreachable.
type DiscoveryOptions struct {
	// Window bounds one Discover call (default 5 min). When it ends the last
	// error is returned, still retryable: the caller backs off and calls
	// again, because nothing else will bring new join material.
	Window time.Duration
	// Interval is the pause between attempts (default 2 s).
	Interval time.Duration
	// RequestTimeout bounds each request to the apiserver (default 10 s), so
	// a server that accepts and never answers cannot eat the window.
	RequestTimeout time.Duration
	// OnRetry, if set, sees every retryable error as it happens.
	OnRetry func(error)
}

func (o DiscoveryOptions) withDefaults() DiscoveryOptions {
	if o.Window <= 0 {
		o.Window = 5 * time.Minute
	}
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 10 * time.Second
	}
	return o
}

// Discover does kubeadm's token discovery against m.APIServer with the
// default DiscoveryOptions; see DiscoveryOptions.Discover.
func Discover(ctx context.Context, m *Material) (*clientcmdapi.Config, error) {
	return DiscoveryOptions{}.Discover(ctx, m)
}

// Discover reads kube-public/cluster-info anonymously, checks the JWS
// signature made with the bootstrap token, checks the CA against the pins,
// re-reads cluster-info over TLS verified by that CA, and returns a
// bootstrap kubeconfig that trusts only that CA and authenticates with the
// token. Errors that retrying cannot fix (bad signature, pin mismatch) are
// PermanentErrors and end the call at once; others are retried until the
// window ends.
func (o DiscoveryOptions) Discover(ctx context.Context, m *Material) (*clientcmdapi.Config, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if m.Kubeconfig != "" {
		return nil, permanent(errors.New("Discover needs a token; a kubeconfig is used as is"))
	}
	o = o.withDefaults()
	wctx, cancel := context.WithTimeout(ctx, o.Window)
	defer cancel()
	var last error
	for {
		cfg, err := o.discoverOnce(wctx, m)
		if err == nil || IsPermanent(err) {
			return cfg, err
		}
		// An attempt cut short by the window's end says only "deadline";
		// the attempt before it says why discovery is failing.
		// The clock is asked too: the rate limiter refuses a deadline that
		// has passed before the context's own timer has fired.
		if deadline, _ := wctx.Deadline(); last != nil && (wctx.Err() != nil || !time.Now().Before(deadline)) {
			err = last
		}
		last = err
		if o.OnRetry != nil {
			o.OnRetry(err)
		}
		t := time.NewTimer(o.Interval)
		select {
		case <-t.C:
		case <-wctx.Done():
			t.Stop()
			if ctx.Err() == nil {
				return nil, fmt.Errorf("token discovery still failing after %v: %w", o.Window, err)
			}
			return nil, err
		}
	}
}

// discoverOnce is one attempt; a nil, non-permanent error means "ask again".
func (o DiscoveryOptions) discoverOnce(ctx context.Context, m *Material) (*clientcmdapi.Config, error) {
	id, secret, _ := strings.Cut(m.Token, ".")

	// Insecure on purpose: the content is authenticated by the JWS below,
	// and the CA it carries by the pin.
	insecure := &rest.Config{Host: m.APIServer, Timeout: o.RequestTimeout, TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
	cm, err := fetchClusterInfo(ctx, insecure)
	if err != nil {
		return nil, err
	}
	kcData, ok := cm.Data[bootstrapapi.KubeConfigKey]
	if !ok {
		return nil, permanent(fmt.Errorf("%s/%s has no %q key", metav1.NamespacePublic, bootstrapapi.ConfigMapClusterInfo, bootstrapapi.KubeConfigKey))
	}
	sig, ok := cm.Data[bootstrapapi.JWSSignatureKeyPrefix+id]
	if !ok {
		// The bootstrapsigner adds the signature a little after the token
		// Secret appears; an unknown or expired token never gets one.
		return nil, fmt.Errorf("bootstrap token id %q is unknown to the cluster (no %s%s signature in cluster-info yet): a token just created gets one within seconds; otherwise the token is wrong or expired", id, bootstrapapi.JWSSignatureKeyPrefix, id)
	}
	if !jws.DetachedTokenIsValid(sig, kcData, id, secret) {
		return nil, permanent(fmt.Errorf("cluster-info signature for bootstrap token id %q does not verify: wrong token secret (or cluster-info was tampered with)", id))
	}

	info, err := clientcmd.Load([]byte(kcData))
	if err != nil {
		return nil, permanent(fmt.Errorf("cluster-info kubeconfig does not parse: %w", err))
	}
	cluster := firstCluster(info)
	if cluster == nil || len(cluster.CertificateAuthorityData) == 0 {
		return nil, permanent(errors.New("cluster-info kubeconfig carries no cluster CA"))
	}
	cas, err := certutil.ParseCertsPEM(cluster.CertificateAuthorityData)
	if err != nil {
		return nil, permanent(fmt.Errorf("cluster-info CA does not parse: %w", err))
	}
	if len(m.CACertHashes) > 0 {
		if err := checkPins(m.CACertHashes, cas); err != nil {
			return nil, err
		}
	} else if err := checkBundle(m.CABundleHashes, cluster.CertificateAuthorityData); err != nil {
		return nil, err
	}

	// Second read over verified TLS: proves the server holds the CA's key,
	// not only a copy of the signed ConfigMap.
	secure := &rest.Config{Host: m.APIServer, Timeout: o.RequestTimeout, TLSClientConfig: rest.TLSClientConfig{CAData: cluster.CertificateAuthorityData}}
	cm2, err := fetchClusterInfo(ctx, secure)
	if err != nil {
		return nil, err
	}
	if cm2.Data[bootstrapapi.KubeConfigKey] != kcData {
		return nil, permanent(errors.New("cluster-info changed between the insecure and the CA-verified read; refusing to trust it"))
	}
	return BootstrapKubeconfig(m.APIServer, cluster.CertificateAuthorityData, m.Token), nil
}

// checkPins returns a PermanentError naming the expected pins and the
// actual one when none of the CA certificates matches.
func checkPins(pins []string, cas []*x509.Certificate) error {
	set := pubkeypin.NewSet()
	if err := set.Allow(pins...); err != nil {
		return permanent(fmt.Errorf("CA pin: %w", err))
	}
	if err := set.CheckAny(cas); err != nil {
		actual := make([]string, 0, len(cas))
		for _, c := range cas {
			actual = append(actual, pubkeypin.Hash(c))
		}
		return permanent(fmt.Errorf("cluster CA does not match the pin: expected %s, cluster-info CA is %s",
			strings.Join(pins, " or "), strings.Join(actual, ", ")))
	}
	return nil
}

// checkBundle compares sha256 of the CA bundle bytes with the k3s-style
// pins (the K10 token prefix).
func checkBundle(pins []string, bundle []byte) error {
	sum := sha256.Sum256(bundle)
	actual := "sha256:" + hex.EncodeToString(sum[:])
	for _, p := range pins {
		if strings.EqualFold(p, actual) {
			return nil
		}
	}
	return permanent(fmt.Errorf("cluster CA bundle does not match the pin: expected %s, cluster-info CA bundle is %s",
		strings.Join(pins, " or "), actual))
}

func fetchClusterInfo(ctx context.Context, cfg *rest.Config) (*corev1.ConfigMap, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, permanent(fmt.Errorf("client for %s: %w", cfg.Host, err))
	}
	cm, err := cs.CoreV1().ConfigMaps(metav1.NamespacePublic).Get(ctx, bootstrapapi.ConfigMapClusterInfo, metav1.GetOptions{})
	switch {
	case err == nil:
		return cm, nil
	// A cluster that is still coming up may not have cluster-info or the
	// RBAC for anonymous reads yet: both are retried, as kubeadm does.
	case apierrors.IsNotFound(err):
		return nil, fmt.Errorf("%s has no %s/%s ConfigMap (yet): the cluster does not offer token discovery, or is still starting", cfg.Host, metav1.NamespacePublic, bootstrapapi.ConfigMapClusterInfo)
	case apierrors.IsForbidden(err), apierrors.IsUnauthorized(err):
		return nil, fmt.Errorf("%s refuses anonymous reads of %s/%s (yet): %w", cfg.Host, metav1.NamespacePublic, bootstrapapi.ConfigMapClusterInfo, err)
	}
	var uerr x509.UnknownAuthorityError
	if errors.As(err, &uerr) || strings.Contains(err.Error(), "x509:") {
		return nil, permanent(fmt.Errorf("TLS to %s does not verify with the pinned cluster CA: %w", cfg.Host, err))
	}
	// Anything else (refused, timeout, 5xx) is worth retrying.
	return nil, fmt.Errorf("read cluster-info from %s: %w", cfg.Host, err)
}

// firstCluster is the cluster a kubeconfig means: the current context's,
// else its only one. Several clusters and no current context is ambiguous
// (nil): picking one by map order would make the answer, and the leave
// decision that depends on it, random.
func firstCluster(cfg *clientcmdapi.Config) *clientcmdapi.Cluster {
	if ctx, ok := cfg.Contexts[cfg.CurrentContext]; ok {
		if c, ok := cfg.Clusters[ctx.Cluster]; ok {
			return c
		}
	}
	if len(cfg.Clusters) == 1 {
		for _, c := range cfg.Clusters {
			return c
		}
	}
	return nil
}

// BootstrapKubeconfig builds the kubeconfig the kubelet uses for TLS
// bootstrapping: it trusts caPEM only and authenticates with token.
func BootstrapKubeconfig(server string, caPEM []byte, token string) *clientcmdapi.Config {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["cluster"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: bytes.Clone(caPEM)}
	cfg.AuthInfos[BootstrapUser] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["bootstrap"] = &clientcmdapi.Context{Cluster: "cluster", AuthInfo: BootstrapUser}
	cfg.CurrentContext = "bootstrap"
	return cfg
}
