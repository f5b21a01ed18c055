package evecrypt

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
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

// ControllerCert is one of the controller's certificates as zedagent
// publishes it (pillar pkg/pillar/types/certinfotypes.go, types.ControllerCert;
// key = hex(CertHash)). Cert holds the bytes exactly as the controller sent
// them (PEM); CertHash is the controller's own name for the certificate,
// copied unchanged from the controller's certificate list
// (pillar cmd/zedagent/handlecertconfig.go). The JSON field names are
// pillar's, so a pubsub file decodes into this type.
type ControllerCert struct {
	HashAlgo int32 // evecommon.HashAlgorithm (1: 16-byte, 2: 32-byte sha256)
	Type     int32 // certs.ZCertType (1 signing, 2 intermediate, 3 ECDH exchange)
	Cert     []byte
	CertHash []byte
}

// FindControllerCert picks, among the published controller certificates,
// the one a CipherContext names by controllerCertHash, the way EVE does
// (pillar cipher/handlecipher.go: lookupControllerCert by
// CipherContext.ControllerCertKey() = hex(ControllerCertHash), the
// ControllerCert key). The hash is compared with the CertHash the record
// carries, byte for byte; nothing is re-hashed, because controllers differ
// in what exactly they hash (Adam hashes its PEM with the trailing newline
// trimmed, and sends the first 16 bytes). The certificate is the first
// parseable CERTIFICATE block of Cert, as in EVE's getControllerCertEcdhKey.
func FindControllerCert(certs []ControllerCert, hash []byte) (*x509.Certificate, error) {
	if len(hash) == 0 {
		return nil, errors.New("cipher context names no controller certificate (empty controllerCertHash)")
	}
	for _, c := range certs {
		if !bytes.Equal(c.CertHash, hash) {
			continue
		}
		cert, err := ParseControllerCert(c.Cert)
		if err != nil {
			return nil, fmt.Errorf("controller certificate %s: %w", hex.EncodeToString(hash), err)
		}
		return cert, nil
	}
	have := make([]string, 0, len(certs))
	for _, c := range certs {
		have = append(have, hex.EncodeToString(c.CertHash))
	}
	return nil, fmt.Errorf("no controller certificate with hash %s among the %d published (%v)", hex.EncodeToString(hash), len(certs), have)
}

// ParseControllerCert returns the first CERTIFICATE block of a PEM bundle
// that parses (blocks that do not are skipped, as EVE skips them); input
// without any PEM block is tried as one DER certificate.
func ParseControllerCert(data []byte) (*x509.Certificate, error) {
	rest, sawPEM := data, false
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
		if c, err := x509.ParseCertificate(block.Bytes); err == nil {
			return c, nil
		}
	}
	if sawPEM {
		return nil, errors.New("no parseable CERTIFICATE PEM block")
	}
	c, err := x509.ParseCertificate(data)
	if err != nil {
		return nil, fmt.Errorf("neither PEM nor a DER certificate: %w", err)
	}
	return c, nil
}
