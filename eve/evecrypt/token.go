package evecrypt

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/lf-edge/evelet/bootstrap"
	"sigs.k8s.io/yaml"
)

// Token kinds (Token.Kind).
const (
	// KindK3sSecure: "K10<sha256 of the CA bundle>::<id>.<secret>".
	KindK3sSecure = "k3s-secure"
	// KindBootstrapToken: a kubeadm bootstrap token with SPKI pins, from a
	// JSON/YAML envelope.
	KindBootstrapToken = "bootstrap-token"
	// KindKubeconfig: a whole kubeconfig.
	KindKubeconfig = "kubeconfig"
)

// CA hash kinds (Token.CAHashKind): what the "sha256:<hex>" values hash.
const (
	// CAHashSPKI: sha256 of the CA certificate's DER SubjectPublicKeyInfo,
	// as kubeadm's --discovery-token-ca-cert-hash. Any one CA in
	// cluster-info may match any one pin.
	CAHashSPKI = "spki"
	// CAHashCertBundle: sha256 of the CA certificate bundle exactly as the
	// server serves it (k3s: the body of GET /cacerts, PEM). To check it
	// against kube-public/cluster-info, hash the certificate-authority-data
	// bytes (the decoded PEM) of the kubeconfig in it.
	CAHashCertBundle = "cert-bundle"
)

// MaxTokenPayload bounds the decrypted token payload evelet parses.
const MaxTokenPayload = 1 << 20

// Token is parsed join material from EncryptionBlock.cluster_token.
type Token struct {
	// Kind is KindK3sSecure, KindBootstrapToken or KindKubeconfig.
	Kind string
	// TokenID and TokenSecret are the two halves of a bootstrap token
	// ([a-z0-9]{6} and [a-z0-9]{16}); empty for a kubeconfig.
	TokenID, TokenSecret string
	// CAHashes are "sha256:<64 lowercase hex>" pins of the cluster CA;
	// CAHashKind says what was hashed. Empty for a kubeconfig, which carries
	// its CA itself.
	CAHashes   []string
	CAHashKind string
	// APIServer is the https URL of the apiserver if the payload names one
	// (envelope apiServer, or the kubeconfig's current cluster); otherwise
	// empty, and the caller uses https://<join_server_ip>:6443.
	APIServer string
	// Kubeconfig is the raw kubeconfig (KindKubeconfig only).
	Kubeconfig []byte
	// NetworkToken is the optional evelet-network ServiceAccount token
	// (envelope "networkToken"), for evelet-cni.
	NetworkToken string
}

// BootstrapToken returns "<id>.<secret>", or "" for a kubeconfig.
func (t *Token) BootstrapToken() string {
	if t.TokenID == "" {
		return ""
	}
	return t.TokenID + "." + t.TokenSecret
}

// String describes the token without its secret (for Token and *Token).
func (t Token) String() string {
	if t.Kind == KindKubeconfig {
		return fmt.Sprintf("kubeconfig for %s (%d bytes)", t.APIServer, len(t.Kubeconfig))
	}
	return fmt.Sprintf("%s %s.<redacted> pins=%s(%s) apiServer=%q", t.Kind, t.TokenID, strings.Join(t.CAHashes, ","), t.CAHashKind, t.APIServer)
}

// GoString keeps %#v from printing the secret too.
func (t Token) GoString() string { return t.String() }

var (
	reTokenID     = regexp.MustCompile(`^[a-z0-9]{6}$`)
	reTokenSecret = regexp.MustCompile(`^[a-z0-9]{16}$`)
	reHex64       = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)
	// for scrubbing error texts of anything secret-looking
	reSecretish = regexp.MustCompile(`([a-z0-9]{6})\.[a-z0-9]{16}|(K10[0-9a-fA-F]*)::\S*`)
)

const acceptedFormats = `accepted formats: ` +
	`(a) "K10<sha256-hex of the CA bundle>::<token-id>.<token-secret>"; ` +
	`(b) a JSON or YAML object {"token": "<id>.<secret>", "caCertHashes": ["sha256:<hex>"], "apiServer": "https://..."} ` +
	`(or {"kubeconfig": "..."}); ` +
	`(c) a kubeconfig (apiVersion: v1, kind: Config)`

// howToBootstrapToken says what a controller must send instead of a k3s
// server token (a shared secret: what EVE-k controllers send today; pillar
// pkg/kube/kube-init/k3s/config.go writes it as k3s's own "token:") and how
// to make one. docs/cluster-token.md has the long form.
const howToBootstrapToken = `evelet joins as a plain kubelet and needs a Kubernetes bootstrap token with a CA pin: ` +
	`on kubeadm, "kubeadm token create --print-join-command" prints the token and its --discovery-token-ca-cert-hash, ` +
	`to be sent as {"token": "<id>.<secret>", "caCertHashes": ["sha256:<hex>"], "apiServer": "https://<host>:6443"}; ` +
	`on k3s, "k3s token create" prints "K10<ca-hash>::<id>.<secret>", to be sent as it is (docs/cluster-token.md)`

// ParseTokenPayload parses the cluster token a controller put into
// EncryptionBlock.cluster_token. The formats are documented in
// docs/eve-config.md. Errors never contain the token secret.
func ParseTokenPayload(s string) (*Token, error) {
	t, err := parseTokenPayload(s)
	if err != nil {
		return nil, scrub(err)
	}
	return t, nil
}

func scrub(err error) error {
	msg := reSecretish.ReplaceAllStringFunc(err.Error(), func(m string) string {
		sub := reSecretish.FindStringSubmatch(m)
		if sub[1] != "" {
			return sub[1] + ".<redacted>"
		}
		return sub[2] + "::<redacted>"
	})
	return errors.New(msg)
}

func parseTokenPayload(s string) (*Token, error) {
	if len(s) > MaxTokenPayload {
		return nil, fmt.Errorf("cluster token payload is %d bytes, more than %d", len(s), MaxTokenPayload)
	}
	trimmed := strings.TrimSpace(s)
	if trimmed == "" {
		return nil, errors.New("cluster token is empty; " + acceptedFormats)
	}
	if strings.HasPrefix(trimmed, "K10") {
		return parseK10(trimmed)
	}
	doc, docErr := asDocument(trimmed)
	if docErr == nil {
		if isKubeconfigDoc(doc) {
			return parseKubeconfig([]byte(s))
		}
		return parseEnvelope([]byte(trimmed))
	}
	if strings.HasPrefix(trimmed, "{") || strings.HasPrefix(trimmed, "apiVersion:") || strings.HasPrefix(trimmed, "kind:") {
		return nil, fmt.Errorf("cluster token looks like JSON/YAML but is not an object: %v; %s", docErr, acceptedFormats)
	}
	if id, secret, ok := strings.Cut(trimmed, "."); ok && reTokenID.MatchString(id) && reTokenSecret.MatchString(secret) {
		return nil, fmt.Errorf("cluster token is a bare bootstrap token (%s.<redacted>) without a CA pin; evelet never joins an unpinned CA: "+
			"send it as {\"token\": ..., \"caCertHashes\": [\"sha256:<hex>\"]} (\"kubeadm token create --print-join-command\" prints the pin as --discovery-token-ca-cert-hash); %s", id, acceptedFormats)
	}
	if !strings.ContainsAny(trimmed, " \t\r\n") && !strings.HasPrefix(trimmed, "[") {
		return nil, fmt.Errorf("cluster token (%d bytes) is not a bootstrap token; it looks like a k3s server token "+
			"(a shared secret, which EVE-k controllers send): %s; %s", len(s), howToBootstrapToken, acceptedFormats)
	}
	return nil, fmt.Errorf("cluster token (%d bytes) is in no format evelet understands; %s; %s", len(s), howToBootstrapToken, acceptedFormats)
}

// parseK10 parses k3s's "secure" token format. k3s credentials may also be
// "<user>:<password>" (a k3s server/agent token); those authenticate to
// k3s's own supervisor API, not to a plain apiserver, so evelet refuses them.
func parseK10(s string) (*Token, error) {
	hash, creds, ok := strings.Cut(strings.TrimPrefix(s, "K10"), "::")
	if !ok {
		return nil, fmt.Errorf("K10 token has no \"::\" after the CA hash; %s", acceptedFormats)
	}
	if !reHex64.MatchString(hash) {
		return nil, fmt.Errorf("K10 token CA hash is %d characters, want 64 hex digits (sha256)", len(hash))
	}
	id, secret, isBootstrap := strings.Cut(creds, ".")
	if !isBootstrap || !reTokenID.MatchString(id) || !reTokenSecret.MatchString(secret) {
		if strings.Contains(creds, ":") {
			return nil, errors.New("K10 token carries k3s <user>:<password> credentials (a k3s server or agent token, the kind EVE-k sends); " +
				"they authenticate only to k3s's own supervisor API, not to the apiserver as a bootstrapping kubelet; " + howToBootstrapToken)
		}
		return nil, errors.New("K10 token credentials are not a bootstrap token of the form [a-z0-9]{6}.[a-z0-9]{16}; " + howToBootstrapToken)
	}
	return &Token{
		Kind:        KindK3sSecure,
		TokenID:     id,
		TokenSecret: secret,
		CAHashes:    []string{"sha256:" + strings.ToLower(hash)},
		CAHashKind:  CAHashCertBundle,
	}, nil
}

// asDocument parses s as a non-empty JSON/YAML mapping.
func asDocument(s string) (map[string]any, error) {
	if !strings.Contains(s, ":") {
		return nil, errors.New("no key: value")
	}
	var m map[string]any
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		return nil, err
	}
	if len(m) == 0 {
		return nil, errors.New("empty object")
	}
	return m, nil
}

func isKubeconfigDoc(m map[string]any) bool {
	for _, k := range []string{"apiVersion", "kind", "clusters", "users", "contexts", "current-context"} {
		if _, ok := m[k]; ok {
			return true
		}
	}
	return false
}

// parseEnvelope decodes the envelope into bootstrap.Material itself: the
// envelope is the join file's material (docs/join-file.md), one format with
// one definition.
func parseEnvelope(b []byte) (*Token, error) {
	var e bootstrap.Material
	if err := yaml.UnmarshalStrict(b, &e); err != nil {
		return nil, fmt.Errorf("cluster token envelope: %v; %s", err, acceptedFormats)
	}
	if e.APIServer != "" {
		if err := checkServer(e.APIServer); err != nil {
			return nil, fmt.Errorf("cluster token envelope: %w", err)
		}
	}
	pinned := len(e.CACertHashes) > 0 || len(e.CABundleHashes) > 0
	switch {
	case e.Kubeconfig != "" && (e.Token != "" || pinned):
		return nil, errors.New("cluster token envelope has both a kubeconfig and a token; give one")
	case e.Kubeconfig != "":
		t, err := parseKubeconfig([]byte(e.Kubeconfig))
		if err != nil {
			return nil, err
		}
		if e.APIServer != "" {
			t.APIServer = e.APIServer
		}
		t.NetworkToken = e.NetworkToken
		return t, nil
	case e.Token == "":
		return nil, errors.New("cluster token envelope has neither \"token\" nor \"kubeconfig\"")
	}
	if strings.HasPrefix(e.Token, "K10") {
		if pinned {
			return nil, errors.New("cluster token envelope: a K10 token already pins the CA bundle; do not add caCertHashes or caBundleHashes (they hash different things)")
		}
		t, err := parseK10(e.Token)
		if err != nil {
			return nil, err
		}
		t.APIServer, t.NetworkToken = e.APIServer, e.NetworkToken
		return t, nil
	}
	id, secret, ok := strings.Cut(e.Token, ".")
	if !ok || !reTokenID.MatchString(id) || !reTokenSecret.MatchString(secret) {
		return nil, errors.New("cluster token envelope: \"token\" is not a bootstrap token of the form [a-z0-9]{6}.[a-z0-9]{16}; " + howToBootstrapToken)
	}
	kind, hashes := CAHashSPKI, e.CACertHashes
	switch {
	case !pinned:
		return nil, errors.New("cluster token envelope: a bootstrap token needs at least one caCertHashes pin (sha256:<hex>); evelet never joins an unpinned CA")
	case len(e.CACertHashes) > 0 && len(e.CABundleHashes) > 0:
		return nil, errors.New("cluster token envelope: give caCertHashes or caBundleHashes, not both")
	case len(e.CABundleHashes) > 0:
		kind, hashes = CAHashCertBundle, e.CABundleHashes
	}
	pins := make([]string, 0, len(hashes))
	for _, p := range hashes {
		hexPart, ok := strings.CutPrefix(p, "sha256:")
		if !ok || !reHex64.MatchString(hexPart) {
			return nil, fmt.Errorf("cluster token envelope: CA pin %q is not sha256:<64 hex digits>", p)
		}
		pins = append(pins, "sha256:"+strings.ToLower(hexPart))
	}
	return &Token{
		Kind:         KindBootstrapToken,
		TokenID:      id,
		TokenSecret:  secret,
		CAHashes:     pins,
		CAHashKind:   kind,
		APIServer:    e.APIServer,
		NetworkToken: e.NetworkToken,
	}, nil
}

// Material is the join material the token carries (APIServer may be empty:
// the caller supplies https://<join_server_ip>:6443 then).
func (t *Token) Material() bootstrap.Material {
	if t.Kind == KindKubeconfig {
		return bootstrap.Material{Kubeconfig: string(t.Kubeconfig), NetworkToken: t.NetworkToken}
	}
	m := bootstrap.Material{APIServer: t.APIServer, Token: t.BootstrapToken(), NetworkToken: t.NetworkToken}
	if t.CAHashKind == CAHashCertBundle {
		m.CABundleHashes = slices.Clone(t.CAHashes)
	} else {
		m.CACertHashes = slices.Clone(t.CAHashes)
	}
	return m
}

func checkServer(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("apiServer %q is not an https URL", s)
	}
	return nil
}

// kubeconfigHead is the part of a kubeconfig evelet looks at; the bootstrap
// side validates the whole thing with client-go.
type kubeconfigHead struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Clusters   []struct {
		Name    string `json:"name"`
		Cluster struct {
			Server string `json:"server"`
		} `json:"cluster"`
	} `json:"clusters"`
	Contexts []struct {
		Name    string `json:"name"`
		Context struct {
			Cluster string `json:"cluster"`
		} `json:"context"`
	} `json:"contexts"`
	CurrentContext string `json:"current-context"`
}

func parseKubeconfig(b []byte) (*Token, error) {
	var k kubeconfigHead
	if err := yaml.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("cluster token kubeconfig does not parse: %v", err)
	}
	if k.Kind != "Config" || k.APIVersion != "v1" {
		return nil, fmt.Errorf("cluster token looks like a kubeconfig but has apiVersion %q kind %q, want v1 Config", k.APIVersion, k.Kind)
	}
	if len(k.Clusters) == 0 {
		return nil, errors.New("cluster token kubeconfig has no clusters")
	}
	server := k.Clusters[0].Cluster.Server
	for _, c := range k.Contexts {
		if c.Name != k.CurrentContext || k.CurrentContext == "" {
			continue
		}
		for _, cl := range k.Clusters {
			if cl.Name == c.Context.Cluster {
				server = cl.Cluster.Server
			}
		}
	}
	if err := checkServer(server); err != nil {
		return nil, fmt.Errorf("cluster token kubeconfig: %w", err)
	}
	return &Token{Kind: KindKubeconfig, APIServer: server, Kubeconfig: append([]byte(nil), b...)}, nil
}
