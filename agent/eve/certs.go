package eve

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/lf-edge/evelet/agent/eve/evecrypt"
)

// controllerCert is the part of zedagent's persistent ControllerCert topic
// evelet reads: the certificate itself (PEM or DER, base64 in JSON).
type controllerCert struct {
	Cert []byte
}

// LoadControllerCerts reads the controller certificates zedagent keeps
// (one ControllerCert JSON file per certificate) or PEM files in dir.
func LoadControllerCerts(dir string) ([]*x509.Certificate, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("controller certificates: %w", err)
	}
	var out []*x509.Certificate
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		var raw []byte
		switch {
		case strings.HasSuffix(e.Name(), ".json"):
			b, err := os.ReadFile(p)
			if err != nil {
				return nil, err
			}
			var cc controllerCert
			if err := json.Unmarshal(b, &cc); err != nil {
				return nil, fmt.Errorf("controller certificate %s: %w", p, err)
			}
			raw = cc.Cert
		case strings.HasSuffix(e.Name(), ".pem"), strings.HasSuffix(e.Name(), ".crt"):
			if raw, err = os.ReadFile(p); err != nil {
				return nil, err
			}
		default:
			continue
		}
		certs, err := evecrypt.ParseCertificates(raw)
		if err != nil {
			return nil, fmt.Errorf("controller certificate %s: %w", p, err)
		}
		out = append(out, certs...)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no controller certificates in %s", dir)
	}
	return out, nil
}
