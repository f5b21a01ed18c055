// Package bootstrap turns join material (apiserver address + bootstrap token +
// CA pin, or a ready kubeconfig) into the credentials the kubelet starts with.
// It does the kubeadm-style token discovery; TLS bootstrapping and client
// certificate rotation are then the kubelet's own job.
package bootstrap

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"k8s.io/client-go/tools/clientcmd"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"
	"k8s.io/kubernetes/cmd/kubeadm/app/util/pubkeypin"
)

// Material is what a device needs to join a cluster. Exactly one of
// (Token + CACertHashes) or Kubeconfig is set.
type Material struct {
	// APIServer is the https URL of the cluster's apiserver.
	APIServer string `json:"apiServer,omitempty"`
	// Token is a bootstrap token "<id>.<secret>".
	Token string `json:"token,omitempty"`
	// CACertHashes pins the cluster CA: "sha256:<hex of the DER SubjectPublicKeyInfo>".
	CACertHashes []string `json:"caCertHashes,omitempty"`
	// CABundleHashes pins the cluster CA the k3s way (the "K10<hex>" token
	// prefix): "sha256:<hex>" of the CA bundle bytes exactly as cluster-info
	// carries them (certificate-authority-data). Either kind of pin suffices.
	CABundleHashes []string `json:"caBundleHashes,omitempty"`
	// Kubeconfig is a whole kubeconfig (YAML) with embedded credentials
	// that may create CSRs; it is used as the kubelet's bootstrap kubeconfig.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// NetworkToken optionally carries the evelet-network ServiceAccount's
	// token for evelet-cni (read NADs, annotate pods: docs/networks.md).
	// It plays no part in joining.
	NetworkToken string `json:"networkToken,omitempty"`
}

// Validate checks the shape of the material without touching the network.
func (m *Material) Validate() error {
	if err := validNetworkToken(m.NetworkToken); err != nil {
		return permanent(err)
	}
	switch {
	case m.Kubeconfig != "" && m.Token != "":
		return permanent(fmt.Errorf("join material has both a token and a kubeconfig; give one"))
	case m.Kubeconfig != "":
		cfg, err := clientcmd.Load([]byte(m.Kubeconfig))
		if err != nil {
			return permanent(fmt.Errorf("join kubeconfig does not parse: %w", err))
		}
		if err := clientcmd.Validate(*cfg); err != nil {
			return permanent(fmt.Errorf("join kubeconfig is invalid: %w", err))
		}
		if firstCluster(cfg) == nil {
			return permanent(fmt.Errorf("join kubeconfig has %d clusters and no current-context naming one; set current-context", len(cfg.Clusters)))
		}
		return nil
	case m.Token == "":
		return permanent(fmt.Errorf("join material has neither a bootstrap token nor a kubeconfig"))
	}
	if !bootstraputil.IsValidBootstrapToken(m.Token) {
		// Never echo the secret half into logs.
		return permanent(fmt.Errorf("bootstrap token %q is not of the form [a-z0-9]{6}.[a-z0-9]{16}", redact(m.Token)))
	}
	if len(m.CACertHashes) == 0 && len(m.CABundleHashes) == 0 {
		return permanent(fmt.Errorf("bootstrap token join needs at least one CA pin (sha256:<hex>); evelet never trusts an unpinned CA"))
	}
	if len(m.CACertHashes) > 0 {
		if err := pubkeypin.NewSet().Allow(m.CACertHashes...); err != nil {
			return permanent(fmt.Errorf("CA pin: %w", err))
		}
	}
	for _, h := range m.CABundleHashes {
		if !reBundleHash.MatchString(h) {
			return permanent(fmt.Errorf("CA bundle hash %q is not of the form sha256:<64 hex>", h))
		}
	}
	u, err := url.Parse(m.APIServer)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return permanent(fmt.Errorf("apiserver %q is not an https URL", m.APIServer))
	}
	return nil
}

// TokenID is the public half of the bootstrap token.
func (m *Material) TokenID() string {
	id, _, _ := strings.Cut(m.Token, ".")
	return id
}

var reBundleHash = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

func redact(token string) string {
	id, _, ok := strings.Cut(token, ".")
	if !ok {
		return "<malformed>"
	}
	return id + ".<redacted>"
}

// Server is the apiserver URL the material points at: APIServer, or the
// current cluster's server of a given kubeconfig.
func (m *Material) Server() string {
	if m.Kubeconfig == "" {
		return m.APIServer
	}
	cfg, err := clientcmd.Load([]byte(m.Kubeconfig))
	if err != nil {
		return ""
	}
	if c := firstCluster(cfg); c != nil {
		return c.Server
	}
	return ""
}

// validNetworkToken: a bearer token is one line of printable ASCII; a
// bound on its size keeps a bad payload out of a file the plugin reads.
func validNetworkToken(t string) error {
	if len(t) > 16<<10 {
		return fmt.Errorf("networkToken is longer than 16 KiB")
	}
	for _, c := range t {
		if c <= ' ' || c > '~' {
			return fmt.Errorf("networkToken contains white space or a non-printable character")
		}
	}
	return nil
}
