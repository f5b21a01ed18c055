package doctor

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/lf-edge/evelet/bootstrap"
	"github.com/lf-edge/evelet/internal/layout"
	certutil "k8s.io/client-go/util/cert"
)

// Files the kubelet keeps in its --cert-dir (credentials/pki).
const (
	servingCurrent    = "kubelet-server-current.pem" // signed by the cluster CA after its CSR is approved
	servingSelfSigned = "kubelet.crt"                // evelet.kubelet.server-tls-bootstrap=false
)

// rotationOverdue: the kubelet rotates at 70-90% of a certificate's
// lifetime, so less than 10% left means rotation is not happening.
const rotationOverdue = 0.1

// ClientCert checks the kubelet's client certificate (the one its
// kubeconfig names) for existence and expiry.
func ClientCert(cfg Config) Result {
	cfg.defaults()
	r := Result{Check: "client-cert"}
	creds := layout.State{Dir: cfg.StateDir}.Credentials()
	store := bootstrap.Store{Dir: creds.Dir}
	rec, _ := store.Record()
	c, valid, err := store.ClientCredentials(cfg.Now())
	switch {
	case err != nil:
		return fail(r, err.Error(), "restart the agent: without a usable kubeconfig the kubelet bootstraps again with the join token")
	case c.NotAfter.IsZero() && rec == nil:
		return warn(r, "none: not joined (no "+creds.Kubeconfig()+")", notJoinedFix)
	case c.NotAfter.IsZero():
		return fail(r, "joined, but no client certificate in "+creds.Kubeconfig()+": TLS bootstrapping has not finished (its CSR is not approved?)",
			"check the cluster auto-approves node client CSRs (kubeadm's RBAC bindings for system:bootstrappers) and that the bootstrap token is valid: kubectl get csr")
	case !valid:
		return fail(r, fmt.Sprintf("%s expired at %s", c.Subject, c.NotAfter.Format(time.RFC3339)),
			"restart the agent: it bootstraps again with the join token (if that token expired too, have the controller send a fresh one)")
	}
	return certLife(r, c.Subject, notBefore(creds.CertDir(), "kubelet-client-current.pem"), c.NotAfter, cfg.Now(),
		"check the kubelet's log for certificate rotation errors (its client CSRs need the cluster's auto-approval)")
}

// ServingCert checks the kubelet's serving certificate: signed by the
// cluster CA once a cluster admin approved its CSR (Kubernetes does not
// approve kubelet-serving CSRs itself); until then kubectl logs/exec fail.
func ServingCert(cfg Config) Result {
	cfg.defaults()
	r := Result{Check: "serving-cert"}
	creds := layout.State{Dir: cfg.StateDir}.Credentials()
	rec, _ := bootstrap.Store{Dir: creds.Dir}.Record()
	node := "<node>"
	if rec != nil && rec.NodeName != "" {
		node = rec.NodeName
	}
	approve := fmt.Sprintf("approve the node's kubernetes.io/kubelet-serving CSR after checking its names and IPs against Node %s: "+
		"kubectl get csr --field-selector spec.signerName=kubernetes.io/kubelet-serving; kubectl certificate approve <name> (docs/kubelet.md)", node)
	path := filepath.Join(creds.CertDir(), servingCurrent)
	cert, err := readCert(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if rec == nil {
			return warn(r, "none: not joined", notJoinedFix)
		}
		if _, err := readCert(filepath.Join(creds.CertDir(), servingSelfSigned)); err == nil {
			return warn(r, "self-signed (evelet.kubelet.server-tls-bootstrap=false): the apiserver cannot verify the kubelet",
				"set evelet.kubelet.server-tls-bootstrap back to true and approve the CSR")
		}
		return fail(r, "no "+path+": the kubelet's serving CSR is pending (kubectl logs/exec to this node fail)", approve)
	case err != nil:
		return fail(r, err.Error(), approve)
	}
	now := cfg.Now()
	if !now.Before(cert.NotAfter) {
		return fail(r, fmt.Sprintf("%s expired at %s: its renewal CSR is not approved", path, cert.NotAfter.Format(time.RFC3339)), approve)
	}
	return certLife(r, cert.Subject.CommonName, cert.NotBefore, cert.NotAfter, now, approve+" (renewal)")
}

// certLife is OK with the expiry, or WARN when rotation looks overdue.
func certLife(r Result, subject string, from, until, now time.Time, fix string) Result {
	found := fmt.Sprintf("%s valid until %s (%s left)", subject, until.Format(time.RFC3339), until.Sub(now).Round(time.Minute))
	if !from.IsZero() && until.Sub(now) < time.Duration(float64(until.Sub(from))*rotationOverdue) {
		return warn(r, found+": the kubelet should have rotated it by now", fix)
	}
	return ok(r, found)
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := certutil.ParseCertsPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs[0], nil
}

// notBefore of a cert file, zero when unreadable (only the overdue
// warning needs it).
func notBefore(dir, name string) time.Time {
	c, err := readCert(filepath.Join(dir, name))
	if err != nil {
		return time.Time{}
	}
	return c.NotBefore
}
