// Package evecfg reads the device configuration that EVE's zedagent
// checkpoints to /persist/checkpoint/lastconfig: a signed
// org.lfedge.eve.auth.AuthContainer whose payload is an
// org.lfedge.eve.config.ConfigResponse. The protobuf types are evelet's own
// wire-compatible subset of eve-api (package evepb); docs/eve-config.md
// describes the format and the assumptions.
package evecfg

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"sort"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/lf-edge/evelet/eve/evecfg/evepb"
)

// DefaultCheckpointPath is where zedagent keeps the last config it received.
// The previous good one is DefaultCheckpointPath + ".bak".
const DefaultCheckpointPath = "/persist/checkpoint/lastconfig"

// MaxCheckpointSize bounds what LoadCheckpoint reads into memory. Real
// configs are kilobytes to a few megabytes.
const MaxCheckpointSize = 64 << 20

// Errors a caller may want to tell apart (use errors.Is).
var (
	// ErrEmpty: the checkpoint has no bytes at all.
	ErrEmpty = errors.New("checkpoint is empty")
	// ErrTruncated: a protobuf field runs past the end of the data, which is
	// what a cut-short write looks like.
	ErrTruncated = errors.New("protobuf is truncated")
	// ErrMalformed: the bytes are not a protobuf message of the expected type.
	ErrMalformed = errors.New("protobuf is malformed")
	// ErrNoPayload: the AuthContainer carries no payload.
	ErrNoPayload = errors.New("AuthContainer has an empty payload")
	// ErrNoConfig: the ConfigResponse carries no EdgeDevConfig.
	ErrNoConfig = errors.New("ConfigResponse has no config")
	// ErrNoSignature: the AuthContainer is not signed.
	ErrNoSignature = errors.New("AuthContainer has no signature")
	// ErrBadSignature: the signature does not verify with the given certificate.
	ErrBadSignature = errors.New("AuthContainer signature does not verify")
	// ErrTooLarge: the file is bigger than MaxCheckpointSize.
	ErrTooLarge = errors.New("checkpoint is too large")
)

// Checkpoint is a parsed config checkpoint.
type Checkpoint struct {
	// Auth is the outer signed envelope.
	Auth *evepb.AuthContainer
	// Response is the parsed payload of Auth.
	Response *evepb.ConfigResponse
	// Config is Response.Config, never nil.
	Config *evepb.EdgeDevConfig
	// SenderCert is the certificate carried in Auth.senderCert, nil if the
	// container has none. It is NOT trusted by itself: see VerifySignature.
	SenderCert *x509.Certificate
	// SenderCertErr says why Auth.senderCert did not parse (SenderCert is
	// then nil); the checkpoint is usable all the same.
	SenderCertErr error

	// Path is the file the checkpoint was read from (LoadCheckpoint only).
	Path string
	// PrimaryErr is set when LoadCheckpoint had to fall back to the .bak
	// file: it says why the main file was not used.
	PrimaryErr error
}

// ParseCheckpoint parses the raw bytes of a checkpoint file. It never
// panics; every failure is an error naming what is wrong. It does not
// verify the signature (see VerifySignature).
func ParseCheckpoint(data []byte) (*Checkpoint, error) {
	if len(data) == 0 {
		return nil, ErrEmpty
	}
	if err := checkWire(data); err != nil {
		return nil, fmt.Errorf("AuthContainer: %w", err)
	}
	var auth evepb.AuthContainer
	if err := proto.Unmarshal(data, &auth); err != nil {
		return nil, fmt.Errorf("AuthContainer: %w: %v", ErrMalformed, err)
	}
	payload := auth.GetProtectedPayload().GetPayload()
	if len(payload) == 0 {
		return nil, ErrNoPayload
	}
	if err := checkWire(payload); err != nil {
		return nil, fmt.Errorf("ConfigResponse payload: %w", err)
	}
	var resp evepb.ConfigResponse
	if err := proto.Unmarshal(payload, &resp); err != nil {
		return nil, fmt.Errorf("ConfigResponse payload: %w: %v", ErrMalformed, err)
	}
	if resp.GetConfig() == nil {
		return nil, ErrNoConfig
	}
	c := &Checkpoint{Auth: &auth, Response: &resp, Config: resp.GetConfig()}
	// EVE never parses senderCert of a config it receives (pillar
	// controllerconn/authen.go checks senderCertHash against the saved
	// signing certificate), so a bad one does not make the config unusable.
	if raw := auth.GetSenderCert(); len(raw) > 0 {
		if cert, err := parseCert(raw); err != nil {
			c.SenderCertErr = fmt.Errorf("AuthContainer senderCert: %w", err)
		} else {
			c.SenderCert = cert
		}
	}
	return c, nil
}

// checkWire walks the top-level fields of a message and reports truncation
// (a field or length running past the end) and invalid tags distinctly from
// other parse errors: proto.Unmarshal only says "invalid wire-format data".
func checkWire(b []byte) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return wireErr(n)
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return wireErr(m)
		}
		b = b[n+m:]
	}
	return nil
}

func wireErr(n int) error {
	err := protowire.ParseError(n)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return ErrTruncated
	}
	return fmt.Errorf("%w: %v", ErrMalformed, err)
}

// parseCert accepts one certificate as PEM or DER.
func parseCert(raw []byte) (*x509.Certificate, error) {
	if block, _ := pem.Decode(raw); block != nil {
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block is %q, want CERTIFICATE", block.Type)
		}
		raw = block.Bytes
	}
	return x509.ParseCertificate(raw)
}

// VerifySignature checks Auth.signatureHash over sha256(payload) with the
// public key of controllerCert, which the caller must trust (the
// controller's signing certificate, e.g. after verifying SenderCert's chain
// to the device's root-certificate.pem). Accepted signatures: ECDSA as the
// fixed-size r||s EVE uses (64 bytes on P-256) or ASN.1 DER, and RSA
// PKCS#1 v1.5 with SHA-256.
func (c *Checkpoint) VerifySignature(controllerCert *x509.Certificate) error {
	if controllerCert == nil {
		return fmt.Errorf("%w: no controller certificate given", ErrBadSignature)
	}
	sig := c.Auth.GetSignatureHash()
	if len(sig) == 0 {
		return ErrNoSignature
	}
	digest := sha256.Sum256(c.Auth.GetProtectedPayload().GetPayload())
	var ok bool
	switch pub := controllerCert.PublicKey.(type) {
	case *ecdsa.PublicKey:
		size := (pub.Curve.Params().BitSize + 7) / 8
		if len(sig) == 2*size {
			r := new(big.Int).SetBytes(sig[:size])
			s := new(big.Int).SetBytes(sig[size:])
			ok = ecdsa.Verify(pub, digest[:], r, s)
		}
		if !ok {
			ok = ecdsa.VerifyASN1(pub, digest[:], sig)
		}
	case *rsa.PublicKey:
		ok = rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig) == nil
	default:
		return fmt.Errorf("%w: unsupported public key type %T", ErrBadSignature, controllerCert.PublicKey)
	}
	if ok {
		return nil
	}
	if h := c.Auth.GetSenderCertHash(); len(h) > 0 && !CertHashMatches(controllerCert, h) {
		return fmt.Errorf("%w: the container names signing certificate %s, the given certificate (%s) is a different one",
			ErrBadSignature, hex.EncodeToString(h), controllerCert.Subject)
	}
	return ErrBadSignature
}

// CertHash is the hash EVE uses to name a certificate: sha256 over its PEM
// encoding (as produced by encoding/pem).
func CertHash(cert *x509.Certificate) []byte {
	h := sha256.Sum256(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))
	return h[:]
}

// CertHashMatches reports whether hash (16 or 32 bytes: EVE's
// HASH_ALGORITHM_SHA256_16BYTES / _32BYTES) names cert. Because controllers
// differ in what exactly they hash, both sha256 of the PEM encoding and
// sha256 of the DER are accepted.
func CertHashMatches(cert *x509.Certificate, hash []byte) bool {
	if cert == nil || (len(hash) != 16 && len(hash) != sha256.Size) {
		return false
	}
	der := sha256.Sum256(cert.Raw)
	p := CertHash(cert)
	return string(der[:len(hash)]) == string(hash) || string(p[:len(hash)]) == string(hash)
}

// CipherContext returns the cipher context with the given id.
func (c *Checkpoint) CipherContext(id string) (*evepb.CipherContext, error) {
	if id == "" {
		return nil, errors.New("cipher context id is empty")
	}
	var have []string
	for _, cc := range c.Config.GetCipherContexts() {
		if cc.GetContextId() == id {
			return cc, nil
		}
		have = append(have, cc.GetContextId())
	}
	sort.Strings(have)
	return nil, fmt.Errorf("cipher context %q is not in the config (have %q)", id, have)
}

// ConfigItems returns the global config properties as a map; a later
// duplicate key wins, as in EVE.
func (c *Checkpoint) ConfigItems() map[string]string {
	m := make(map[string]string, len(c.Config.GetConfigItems()))
	for _, it := range c.Config.GetConfigItems() {
		m[it.GetKey()] = it.GetValue()
	}
	return m
}

// Cluster returns the cluster intent, nil when the device is not in a
// cluster.
func (c *Checkpoint) Cluster() *evepb.EdgeNodeCluster {
	return c.Config.GetCluster()
}

// DeviceUUID is the device id the config is for.
func (c *Checkpoint) DeviceUUID() string {
	return c.Config.GetId().GetUuid()
}

// LoadError is returned by LoadCheckpoint when neither the checkpoint nor
// its .bak could be used. errors.Is sees through both.
type LoadError struct {
	Path      string
	Primary   error
	BackupErr error
}

func (e *LoadError) Error() string {
	return fmt.Sprintf("config checkpoint %s: %v; last known good %s.bak: %v", e.Path, e.Primary, e.Path, e.BackupErr)
}

func (e *LoadError) Unwrap() []error { return []error{e.Primary, e.BackupErr} }

// NotExist reports whether neither file exists: the device has not
// received a config yet.
func (e *LoadError) NotExist() bool {
	return errors.Is(e.Primary, os.ErrNotExist) && errors.Is(e.BackupErr, os.ErrNotExist)
}

// LoadCheckpoint reads and parses path, falling back to path+".bak" (the
// last known good config) when path is missing, truncated or invalid. On
// fallback the returned Checkpoint's Path names the .bak and PrimaryErr
// says what was wrong with path. If both fail the error is a *LoadError
// carrying both reasons.
func LoadCheckpoint(path string) (*Checkpoint, error) {
	return load(path, nil)
}

// LoadVerifiedCheckpoint is LoadCheckpoint where a checkpoint whose
// signature does not verify with controllerCert also counts as invalid.
func LoadVerifiedCheckpoint(path string, controllerCert *x509.Certificate) (*Checkpoint, error) {
	return load(path, func(c *Checkpoint) error { return c.VerifySignature(controllerCert) })
}

func load(path string, check func(*Checkpoint) error) (*Checkpoint, error) {
	c, err := loadOne(path, check)
	if err == nil {
		return c, nil
	}
	bak := path + ".bak"
	cb, errb := loadOne(bak, check)
	if errb == nil {
		cb.PrimaryErr = err
		return cb, nil
	}
	return nil, &LoadError{Path: path, Primary: err, BackupErr: errb}
}

func loadOne(path string, check func(*Checkpoint) error) (*Checkpoint, error) {
	data, err := readFileLimited(path, MaxCheckpointSize)
	if err != nil {
		return nil, err
	}
	c, err := ParseCheckpoint(data)
	if err != nil {
		return nil, err
	}
	if check != nil {
		if err := check(c); err != nil {
			return nil, err
		}
	}
	c.Path = path
	return c, nil
}

func readFileLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, limit)
	}
	return data, nil
}
