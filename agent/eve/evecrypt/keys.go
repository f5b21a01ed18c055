package evecrypt

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/lf-edge/evelet/agent/eve/evecfg"
)

// DefaultDeviceKeyPath is the device's ECDH private key on EVE devices
// without a TPM (with a TPM the key never leaves it and evelet cannot
// decrypt by itself; see docs/eve-config.md).
const DefaultDeviceKeyPath = "/persist/certs/ecdh.key.pem"

// LoadDeviceKey reads the device's ECDH private key (PEM: SEC 1
// "EC PRIVATE KEY" or PKCS#8 "PRIVATE KEY"; P-256 only).
func LoadDeviceKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("device ECDH key: %w", err)
	}
	k, err := ParseDeviceKey(b)
	if err != nil {
		return nil, fmt.Errorf("device ECDH key %s: %w", path, err)
	}
	return k, nil
}

// ParseDeviceKey parses a PEM-encoded P-256 private key. Blocks other than a
// private key (EC PARAMETERS, certificates) are skipped.
func ParseDeviceKey(pemBytes []byte) (*ecdsa.PrivateKey, error) {
	rest := pemBytes
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no EC PRIVATE KEY or PRIVATE KEY PEM block")
		}
		var key any
		var err error
		switch block.Type {
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", block.Type, err)
		}
		ek, ok := key.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("%s holds a %T, want an ECDSA/ECDH P-256 key", block.Type, key)
		}
		if ek.Curve != elliptic.P256() {
			return nil, fmt.Errorf("key is on %s, want P-256", ek.Curve.Params().Name)
		}
		return ek, nil
	}
}

// ParseCertificates parses all CERTIFICATE blocks of a PEM bundle; input
// without any PEM block is tried as a single DER certificate.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	sawPEM := false
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		sawPEM = true
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if !sawPEM {
		c, err := x509.ParseCertificate(data)
		if err != nil {
			return nil, fmt.Errorf("neither PEM nor a DER certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no CERTIFICATE PEM block")
	}
	return certs, nil
}

// LoadCertificates reads a PEM bundle (or one DER certificate) from path.
func LoadCertificates(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := ParseCertificates(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

// FindControllerCert picks, among candidate controller certificates, the one
// a CipherContext names by controllerCertHash (sha256 of the certificate,
// 16 or 32 bytes; matched against the PEM and the DER encoding, see
// evecfg.CertHashMatches).
func FindControllerCert(certs []*x509.Certificate, hash []byte) (*x509.Certificate, error) {
	if len(hash) == 0 {
		return nil, errors.New("cipher context names no controller certificate (empty controllerCertHash)")
	}
	for _, c := range certs {
		if evecfg.CertHashMatches(c, hash) {
			return c, nil
		}
	}
	return nil, fmt.Errorf("no controller certificate with hash %s among %d candidates", hex.EncodeToString(hash), len(certs))
}
