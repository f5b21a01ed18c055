package bootstrap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/lf-edge/evelet/internal/atomicfile"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/kubernetes/cmd/kubeadm/app/util/pubkeypin"
)

// Store is the credential directory under the persistent state root. The
// kubelet reads the bootstrap kubeconfig from it and writes its rotated
// client certificates and real kubeconfig into it.
type Store struct{ Dir string }

func (s Store) BootstrapKubeconfigPath() string { return filepath.Join(s.Dir, "bootstrap-kubeconfig") }
func (s Store) KubeconfigPath() string          { return filepath.Join(s.Dir, "kubeconfig") }
func (s Store) CertDir() string                 { return filepath.Join(s.Dir, "pki") }
func (s Store) ClusterCAPath() string           { return filepath.Join(s.Dir, "ca.crt") }
func (s Store) joinRecordPath() string          { return filepath.Join(s.Dir, "join.json") }

// JoinRecord says which cluster the stored credentials belong to.
type JoinRecord struct {
	APIServer string    `json:"apiServer"`
	CAPin     string    `json:"caPin"`
	NodeName  string    `json:"nodeName,omitempty"`
	JoinedAt  time.Time `json:"joinedAt"`
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
// the same apiserver, and otherwise validates m (token discovery or a given
// kubeconfig) and writes the bootstrap kubeconfig. On any error nothing is
// written.
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
		if rec, _ := s.Record(); rec != nil && rec.APIServer == m.Server() {
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
		if boot, err = Discover(ctx, m); err != nil {
			return "", err
		}
	}
	return Bootstrapped, s.write(boot)
}

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
	// Old client credentials belong to whatever we joined before; the kubelet
	// must not prefer them over the new bootstrap kubeconfig.
	if err := s.removeClient(); err != nil {
		return err
	}
	if len(cluster.CertificateAuthorityData) > 0 {
		if err := atomicfile.WriteFile(s.ClusterCAPath(), cluster.CertificateAuthorityData, 0o600); err != nil {
			return err
		}
	}
	if err := atomicfile.WriteFile(s.BootstrapKubeconfigPath(), data, 0o600); err != nil {
		return err
	}
	rb, _ := json.MarshalIndent(rec, "", "  ")
	return atomicfile.WriteFile(s.joinRecordPath(), rb, 0o600)
}

func (s Store) removeClient() error {
	if err := os.Remove(s.KubeconfigPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.RemoveAll(s.CertDir())
}

// Wipe removes every credential; used when the device leaves a cluster.
func (s Store) Wipe() error { return os.RemoveAll(s.Dir) }
