package bootstrap

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/lf-edge/evelet/internal/atomicfile"
	"github.com/lf-edge/evelet/internal/layout"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/kubernetes/cmd/kubeadm/app/util/pubkeypin"
)

// Store is the credential directory under the persistent state root. The
// kubelet reads the bootstrap kubeconfig from it and writes its rotated
// client certificates and real kubeconfig into it. File names come from
// internal/layout.
type Store struct {
	Dir string
	// Discovery tunes token discovery's retries in Prepare.
	Discovery DiscoveryOptions
}

func (s Store) files() layout.Credentials { return layout.Credentials{Dir: s.Dir} }

func (s Store) BootstrapKubeconfigPath() string { return s.files().BootstrapKubeconfig() }
func (s Store) KubeconfigPath() string          { return s.files().Kubeconfig() }
func (s Store) CertDir() string                 { return s.files().CertDir() }
func (s Store) ClusterCAPath() string           { return s.files().ClusterCA() }
func (s Store) joinRecordPath() string          { return s.files().JoinRecord() }

// JoinRecord says which cluster the stored credentials belong to. It is
// written last and removed first (see write), so it exists only next to a
// complete credential set.
type JoinRecord struct {
	APIServer string `json:"apiServer"`
	// CAPin is the SPKI pin (kubeadm's sha256:<hex>) of the cluster CA.
	CAPin    string    `json:"caPin"`
	NodeName string    `json:"nodeName,omitempty"`
	JoinedAt time.Time `json:"joinedAt"`
}

// Client describes the kubelet's current client credentials.
type Client struct {
	Subject  string
	NotAfter time.Time
}

// ClientCredentials returns the kubelet's client certificate if it exists
// and is still valid; ok is false when the kubelet must (re)bootstrap.
func (s Store) ClientCredentials(now time.Time) (c Client, ok bool, err error) {
	cfg, err := clientcmd.LoadFromFile(s.KubeconfigPath())
	if errors.Is(err, os.ErrNotExist) {
		return Client{}, false, nil
	}
	if err != nil {
		return Client{}, false, fmt.Errorf("kubelet kubeconfig %s: %w", s.KubeconfigPath(), err)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if ctx == nil || cfg.AuthInfos[ctx.AuthInfo] == nil {
		return Client{}, false, fmt.Errorf("kubelet kubeconfig %s has no current user", s.KubeconfigPath())
	}
	ai := cfg.AuthInfos[ctx.AuthInfo]
	pemData := ai.ClientCertificateData
	if len(pemData) == 0 && ai.ClientCertificate != "" {
		if pemData, err = os.ReadFile(ai.ClientCertificate); err != nil {
			return Client{}, false, nil // rotated away or wiped: bootstrap again
		}
	}
	certs, err := certutil.ParseCertsPEM(pemData)
	if err != nil || len(certs) == 0 {
		return Client{}, false, nil
	}
	leaf := certs[0]
	c = Client{Subject: leaf.Subject.CommonName, NotAfter: leaf.NotAfter}
	return c, now.Before(leaf.NotAfter), nil
}

// Record returns the join record of the stored credentials, if any.
func (s Store) Record() (*JoinRecord, error) {
	b, err := os.ReadFile(s.joinRecordPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r JoinRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("join record %s: %w", s.joinRecordPath(), err)
	}
	return &r, nil
}

// SetNodeName records which Node the credentials were issued for, so a
// device that restarts after its cluster was removed still knows what to
// drain and delete.
func (s Store) SetNodeName(name string) error {
	rec, err := s.Record()
	if err != nil || rec == nil {
		return fmt.Errorf("no join record to update: %v", err)
	}
	if rec.NodeName == name {
		return nil
	}
	rec.NodeName = name
	b, _ := json.MarshalIndent(rec, "", "  ")
	return atomicfile.WriteFile(s.joinRecordPath(), b, 0o600)
}

// Holds reports whether the stored credentials belong to the cluster m
// names. The CA is the cluster's identity, not the URL: a cluster rebuilt at
// the same address has a new CA, and credentials (and a kubelet) trusting
// the old one are useless there. The stored CA (ca.crt, as discovery found
// it) must satisfy m's pins (SPKI or bundle hash) or, for a kubeconfig, share
// a CA key with the kubeconfig's CA. Holds is false without a record.
func (s Store) Holds(m *Material) (bool, error) {
	rec, err := s.Record()
	if err != nil || rec == nil {
		return false, err
	}
	if rec.APIServer != m.Server() {
		return false, nil
	}
	stored, err := os.ReadFile(s.ClusterCAPath())
	if errors.Is(err, os.ErrNotExist) {
		stored = nil
	} else if err != nil {
		return false, err
	}
	return sameCA(m, stored, rec.CAPin)
}

// sameCA compares m's idea of the cluster CA with the stored bundle (or,
// when no bundle was stored, the recorded SPKI pin).
func sameCA(m *Material, stored []byte, recPin string) (bool, error) {
	var storedPins []string
	if len(stored) > 0 {
		cas, err := certutil.ParseCertsPEM(stored)
		if err != nil {
			return false, fmt.Errorf("stored cluster CA: %w", err)
		}
		for _, c := range cas {
			storedPins = append(storedPins, pubkeypin.Hash(c))
		}
	} else if recPin != "" {
		storedPins = []string{recPin}
	}
	switch {
	case m.Kubeconfig != "":
		ca, err := m.kubeconfigCA()
		if err != nil {
			return false, err
		}
		if len(ca) == 0 || len(storedPins) == 0 {
			// Neither side names a CA we can compare: the URL decides.
			return len(ca) == 0 && len(storedPins) == 0, nil
		}
		cas, err := certutil.ParseCertsPEM(ca)
		if err != nil {
			return false, permanent(fmt.Errorf("join kubeconfig CA: %w", err))
		}
		for _, c := range cas {
			if slices.Contains(storedPins, pubkeypin.Hash(c)) {
				return true, nil
			}
		}
		return false, nil
	case len(m.CACertHashes) > 0:
		for _, p := range m.CACertHashes {
			if slices.ContainsFunc(storedPins, func(q string) bool { return strings.EqualFold(p, q) }) {
				return true, nil
			}
		}
		return false, nil
	default:
		if len(stored) == 0 {
			return false, nil
		}
		return checkBundle(m.CABundleHashes, stored) == nil, nil
	}
}

// Outcome says what Prepare did.
type Outcome string

const (
	// Reused: valid client credentials exist; the kubelet starts without a CSR.
	Reused Outcome = "reused"
	// Bootstrapped: a fresh bootstrap kubeconfig was written; the kubelet will
	// request a client certificate.
	Bootstrapped Outcome = "bootstrapped"
)

// Prepare makes sure the kubelet can start: it keeps valid credentials for
// the same cluster (apiserver and CA, see Holds), and otherwise validates m
// (token discovery or a given kubeconfig) and writes the bootstrap
// kubeconfig. On any error before the write nothing changes on disk.
func (s Store) Prepare(ctx context.Context, m *Material, now time.Time) (Outcome, error) {
	if err := m.Validate(); err != nil {
		return "", err
	}
	// The kubelet adds files (pki/) with its own modes; the directory
	// keeps all of them private.
	if err := os.Chmod(s.Dir, 0o700); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if _, ok, err := s.ClientCredentials(now); err == nil && ok {
		if same, _ := s.Holds(m); same {
			return Reused, nil
		}
	}
	var boot *clientcmdapi.Config
	if m.Kubeconfig != "" {
		cfg, err := clientcmd.Load([]byte(m.Kubeconfig))
		if err != nil {
			return "", permanent(fmt.Errorf("join kubeconfig: %w", err))
		}
		if err := clientcmdapi.FlattenConfig(cfg); err != nil {
			return "", permanent(fmt.Errorf("join kubeconfig references files that cannot be embedded: %w", err))
		}
		boot = cfg
	} else {
		var err error
		if boot, err = s.Discovery.Discover(ctx, m); err != nil {
			return "", err
		}
	}
	return Bootstrapped, s.write(boot)
}

// write replaces the credential set. The join record is the set's
// manifest: it is removed before anything else changes and written last,
// so a crash (or a failed write) in between leaves no record, which reads
// as "no credentials" and makes the next Prepare start over, never as a
// record of one cluster next to another cluster's files.
func (s Store) write(boot *clientcmdapi.Config) error {
	cluster := firstCluster(boot)
	if cluster == nil || cluster.Server == "" {
		return permanent(errors.New("bootstrap kubeconfig names no apiserver"))
	}
	rec := JoinRecord{APIServer: cluster.Server, JoinedAt: time.Now().UTC()}
	if cas, err := certutil.ParseCertsPEM(cluster.CertificateAuthorityData); err == nil && len(cas) > 0 {
		rec.CAPin = pubkeypin.Hash(cas[0])
	}
	data, err := clientcmd.Write(*boot)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(s.Dir, 0o700); err != nil {
		return err
	}
	if err := removeIfExists(s.joinRecordPath()); err != nil {
		return err
	}
	// Old client credentials belong to whatever we joined before; the kubelet
	// must not prefer them over the new bootstrap kubeconfig.
	if err := s.removeClient(); err != nil {
		return err
	}
	if len(cluster.CertificateAuthorityData) > 0 {
		if err := atomicfile.WriteFile(s.ClusterCAPath(), cluster.CertificateAuthorityData, 0o600); err != nil {
			return err
		}
	} else if err := removeIfExists(s.ClusterCAPath()); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(s.BootstrapKubeconfigPath(), data, 0o600); err != nil {
		return err
	}
	rb, _ := json.MarshalIndent(rec, "", "  ")
	return atomicfile.WriteFile(s.joinRecordPath(), rb, 0o600)
}

func (s Store) removeClient() error {
	if err := removeIfExists(s.KubeconfigPath()); err != nil {
		return err
	}
	return os.RemoveAll(s.CertDir())
}

func removeIfExists(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Wipe removes every credential; used when the device leaves a cluster.
func (s Store) Wipe() error { return os.RemoveAll(s.Dir) }

// kubeconfigCA is the CA bundle of the join kubeconfig's cluster (embedded,
// or read from the file it names); nil when it names none.
func (m *Material) kubeconfigCA() ([]byte, error) {
	cfg, err := clientcmd.Load([]byte(m.Kubeconfig))
	if err != nil {
		return nil, permanent(fmt.Errorf("join kubeconfig does not parse: %w", err))
	}
	c := firstCluster(cfg)
	if c == nil {
		return nil, nil
	}
	if len(c.CertificateAuthorityData) > 0 || c.CertificateAuthority == "" {
		return bytes.Clone(c.CertificateAuthorityData), nil
	}
	return os.ReadFile(c.CertificateAuthority)
}
