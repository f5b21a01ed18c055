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

// Discover does kubeadm's token discovery against m.APIServer: it reads
// kube-public/cluster-info anonymously, checks the JWS signature made with
// the bootstrap token, checks the CA against the pins, re-reads cluster-info
// over TLS verified by that CA, and returns a bootstrap kubeconfig that
// trusts only that CA and authenticates with the token.
func Discover(ctx context.Context, m *Material) (*clientcmdapi.Config, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if m.Kubeconfig != "" {
		return nil, permanent(errors.New("Discover needs a token; a kubeconfig is used as is"))
	}
	id, secret, _ := strings.Cut(m.Token, ".")

	// Insecure on purpose: the content is authenticated by the JWS below,
	// and the CA it carries by the pin.
	insecure := &rest.Config{Host: m.APIServer, TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
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
		return nil, permanent(fmt.Errorf("bootstrap token id %q is unknown to the cluster (no %s%s signature in cluster-info): wrong or expired token", id, bootstrapapi.JWSSignatureKeyPrefix, id))
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
	secure := &rest.Config{Host: m.APIServer, TLSClientConfig: rest.TLSClientConfig{CAData: cluster.CertificateAuthorityData}}
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
	case apierrors.IsNotFound(err):
		return nil, permanent(fmt.Errorf("%s has no %s/%s ConfigMap: the cluster does not offer token discovery", cfg.Host, metav1.NamespacePublic, bootstrapapi.ConfigMapClusterInfo))
	case apierrors.IsForbidden(err), apierrors.IsUnauthorized(err):
		return nil, permanent(fmt.Errorf("%s refuses anonymous reads of %s/%s: %w", cfg.Host, metav1.NamespacePublic, bootstrapapi.ConfigMapClusterInfo, err))
	}
	var uerr x509.UnknownAuthorityError
	if errors.As(err, &uerr) || strings.Contains(err.Error(), "x509:") {
		return nil, permanent(fmt.Errorf("TLS to %s does not verify with the pinned cluster CA: %w", cfg.Host, err))
	}
	// Anything else (refused, timeout, 5xx) is worth retrying.
	return nil, fmt.Errorf("read cluster-info from %s: %w", cfg.Host, err)
}

func firstCluster(cfg *clientcmdapi.Config) *clientcmdapi.Cluster {
	if ctx, ok := cfg.Contexts[cfg.CurrentContext]; ok {
		if c, ok := cfg.Clusters[ctx.Cluster]; ok {
			return c
		}
	}
	for _, c := range cfg.Clusters {
		return c
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
