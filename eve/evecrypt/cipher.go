// Package evecrypt decrypts EVE "object encryption" cipher blocks (the
// encrypted cluster token in EdgeDevConfig.cluster) and parses the join
// token they carry. See docs/eve-config.md.
//
// The scheme, as EVE implements it: ECDH on P-256 between the device's ECDH
// key and the controller's ECDH-exchange certificate; AES key =
// sha256(X || Y) of the shared point with both coordinates left-padded to 32
// bytes; AES-256-CFB with IV = CipherBlock.initialValue; the plaintext is a
// marshalled EncryptionBlock whose sha256 must equal
// CipherBlock.clearTextSha256.
package evecrypt

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"

	"google.golang.org/protobuf/proto"

	"github.com/lf-edge/evelet/eve/evecfg/evepb"
)

var (
	// ErrHashMismatch: the decrypted bytes do not hash to clearTextSha256.
	// This is what a wrong device key, a wrong controller certificate or a
	// corrupted block look like; the plaintext is never returned then.
	ErrHashMismatch = errors.New("clear-text hash mismatch")
	// ErrUnsupportedScheme: the cipher context asks for something other than
	// ECDH + AES-256-CFB.
	ErrUnsupportedScheme = errors.New("unsupported cipher scheme")
)

const coordSize = 32 // P-256 field element size in bytes

// DeriveKey computes the AES-256 key EVE derives from an ECDH exchange
// between priv and peer (both P-256): sha256(X || Y) of priv*peer, each
// coordinate left-padded to 32 bytes. It is symmetric: the device computes
// it from (device key, controller cert key), the controller from
// (controller key, device cert key).
func DeriveKey(priv *ecdsa.PrivateKey, peer *ecdsa.PublicKey) ([32]byte, error) {
	x, y, err := sharedPoint(priv, peer)
	if err != nil {
		return [32]byte{}, err
	}
	buf := make([]byte, 2*coordSize)
	x.FillBytes(buf[:coordSize])
	y.FillBytes(buf[coordSize:])
	return sha256.Sum256(buf), nil
}

// legacyKey is the derivation of EVE releases before the coordinates were
// padded: sha256 of the minimal big-endian encodings. It differs from
// DeriveKey only when X or Y has a leading zero byte (about 1 in 128
// exchanges); DecryptCipherBlock tries it only then, and only accepts its
// result when clearTextSha256 matches.
func legacyKey(x, y *big.Int) [32]byte {
	return sha256.Sum256(append(x.Bytes(), y.Bytes()...))
}

// sharedPoint returns the full ECDH point priv*peer.
//
// crypto/ecdh is the maintained ECDH API, but it returns only the X
// coordinate, and EVE's KDF hashes Y as well. The standard library offers
// the full point only through crypto/elliptic's Curve.ScalarMult, which is
// deprecated as a low-level API but still present (and, for P-256, backed by
// the same constant-time implementation). So: crypto/ecdh validates both
// keys and computes X; ScalarMult computes the point; the two X must agree.
func sharedPoint(priv *ecdsa.PrivateKey, peer *ecdsa.PublicKey) (x, y *big.Int, err error) {
	if priv == nil || peer == nil {
		return nil, nil, errors.New("ECDH needs both a private and a public key")
	}
	if priv.Curve != elliptic.P256() || peer.Curve != elliptic.P256() {
		return nil, nil, fmt.Errorf("%w: ECDH keys must be on P-256", ErrUnsupportedScheme)
	}
	ePriv, err := priv.ECDH()
	if err != nil {
		return nil, nil, fmt.Errorf("private key: %w", err)
	}
	ePub, err := peer.ECDH()
	if err != nil {
		return nil, nil, fmt.Errorf("public key: %w", err)
	}
	sharedX, err := ePriv.ECDH(ePub)
	if err != nil {
		return nil, nil, fmt.Errorf("ECDH: %w", err)
	}
	scalar, err := priv.Bytes()
	if err != nil {
		return nil, nil, fmt.Errorf("private key: %w", err)
	}
	point, err := peer.Bytes() // 0x04 || X || Y
	if err != nil || len(point) != 1+2*coordSize {
		return nil, nil, fmt.Errorf("public key: cannot encode point: %v", err)
	}
	px := new(big.Int).SetBytes(point[1 : 1+coordSize])
	py := new(big.Int).SetBytes(point[1+coordSize:])
	x, y = elliptic.P256().ScalarMult(px, py, scalar) //nolint:staticcheck // full point needed, see above
	var xb [coordSize]byte
	x.FillBytes(xb[:])
	if !bytes.Equal(xb[:], sharedX) {
		return nil, nil, errors.New("ECDH: internal inconsistency between crypto/ecdh and crypto/elliptic")
	}
	return x, y, nil
}

func checkContext(ctx *evepb.CipherContext) error {
	if ctx == nil {
		return errors.New("no cipher context")
	}
	if k := ctx.GetKeyExchangeScheme(); k != evepb.KeyExchangeScheme_KEA_ECDH {
		return fmt.Errorf("%w: cipher context %q uses key exchange %v, want KEA_ECDH", ErrUnsupportedScheme, ctx.GetContextId(), k)
	}
	if e := ctx.GetEncryptionScheme(); e != evepb.EncryptionScheme_SA_AES_256_CFB {
		return fmt.Errorf("%w: cipher context %q uses encryption %v, want SA_AES_256_CFB", ErrUnsupportedScheme, ctx.GetContextId(), e)
	}
	return nil
}

func certKey(cert *x509.Certificate, who string) (*ecdsa.PublicKey, error) {
	if cert == nil {
		return nil, fmt.Errorf("no %s certificate", who)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: %s certificate has a %T key, want ECDSA P-256", ErrUnsupportedScheme, who, cert.PublicKey)
	}
	return pub, nil
}

// aesCFB runs AES-256-CFB over in.
//
// cipher.NewCFBEncrypter/NewCFBDecrypter are deprecated in favour of AEAD
// modes, but CFB is what EVE's object encryption specifies, so there is no
// choice here; integrity comes from the clearTextSha256 check (and the
// config signature), not from the mode.
func aesCFB(key, iv, in []byte, decrypt bool) ([]byte, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	if len(iv) != aes.BlockSize {
		return nil, fmt.Errorf("initialValue is %d bytes, want %d", len(iv), aes.BlockSize)
	}
	var s cipher.Stream
	if decrypt {
		s = cipher.NewCFBDecrypter(block, iv) //nolint:staticcheck // EVE's scheme is CFB
	} else {
		s = cipher.NewCFBEncrypter(block, iv) //nolint:staticcheck // EVE's scheme is CFB
	}
	out := make([]byte, len(in))
	s.XORKeyStream(out, in)
	return out, nil
}

// DecryptCipherBlock decrypts block on the device side: ECDH between
// deviceKey and controllerCert's key, as described by ctx. The caller picks
// controllerCert by ctx.controllerCertHash (FindControllerCert); a wrong
// certificate shows as ErrHashMismatch. It returns the
// plaintext (a marshalled EncryptionBlock) only if its sha256 matches
// block.clearTextSha256; otherwise the error wraps ErrHashMismatch.
func DecryptCipherBlock(block *evepb.CipherBlock, ctx *evepb.CipherContext, deviceKey *ecdsa.PrivateKey, controllerCert *x509.Certificate) ([]byte, error) {
	if block == nil {
		return nil, errors.New("no cipher block")
	}
	if err := checkContext(ctx); err != nil {
		return nil, err
	}
	if id := block.GetCipherContextId(); id != "" && id != ctx.GetContextId() {
		return nil, fmt.Errorf("cipher block names context %q, given context is %q", id, ctx.GetContextId())
	}
	want := block.GetClearTextSha256()
	if len(want) != sha256.Size {
		return nil, fmt.Errorf("cipher block has a %d-byte clearTextSha256, want %d: refusing unverifiable plaintext", len(want), sha256.Size)
	}
	pub, err := certKey(controllerCert, "controller")
	if err != nil {
		return nil, err
	}
	x, y, err := sharedPoint(deviceKey, pub)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 2*coordSize)
	x.FillBytes(buf[:coordSize])
	y.FillBytes(buf[coordSize:])
	keys := [][32]byte{sha256.Sum256(buf)}
	if len(x.Bytes()) < coordSize || len(y.Bytes()) < coordSize {
		keys = append(keys, legacyKey(x, y))
	}
	for _, key := range keys {
		plain, err := aesCFB(key[:], block.GetInitialValue(), block.GetCipherData(), true)
		if err != nil {
			return nil, err
		}
		got := sha256.Sum256(plain)
		if subtle.ConstantTimeCompare(got[:], want) == 1 {
			return plain, nil
		}
	}
	return nil, fmt.Errorf("%w: wrong device key, wrong controller certificate, or a corrupted cipher block", ErrHashMismatch)
}

// DecryptEncryptionBlock is DecryptCipherBlock followed by unmarshalling the
// EncryptionBlock.
func DecryptEncryptionBlock(block *evepb.CipherBlock, ctx *evepb.CipherContext, deviceKey *ecdsa.PrivateKey, controllerCert *x509.Certificate) (*evepb.EncryptionBlock, error) {
	plain, err := DecryptCipherBlock(block, ctx, deviceKey, controllerCert)
	if err != nil {
		return nil, err
	}
	var eb evepb.EncryptionBlock
	if err := proto.Unmarshal(plain, &eb); err != nil {
		return nil, fmt.Errorf("decrypted data is not an EncryptionBlock: %w", err)
	}
	return &eb, nil
}

// EncryptCipherBlock is the controller side (used by the simulator and
// tests): it encrypts plaintext for the device holding deviceCert's key,
// with a fresh random IV, using ECDH between controllerKey and deviceCert.
func EncryptCipherBlock(plaintext []byte, ctx *evepb.CipherContext, controllerKey *ecdsa.PrivateKey, deviceCert *x509.Certificate) (*evepb.CipherBlock, error) {
	if err := checkContext(ctx); err != nil {
		return nil, err
	}
	pub, err := certKey(deviceCert, "device")
	if err != nil {
		return nil, err
	}
	key, err := DeriveKey(controllerKey, pub)
	if err != nil {
		return nil, err
	}
	iv := make([]byte, aes.BlockSize)
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	ct, err := aesCFB(key[:], iv, plaintext, false)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(plaintext)
	return &evepb.CipherBlock{
		CipherContextId: ctx.GetContextId(),
		InitialValue:    iv,
		CipherData:      ct,
		ClearTextSha256: sum[:],
	}, nil
}

// EncryptEncryptionBlock marshals eb and encrypts it (controller side).
func EncryptEncryptionBlock(eb *evepb.EncryptionBlock, ctx *evepb.CipherContext, controllerKey *ecdsa.PrivateKey, deviceCert *x509.Certificate) (*evepb.CipherBlock, error) {
	plain, err := proto.Marshal(eb)
	if err != nil {
		return nil, err
	}
	return EncryptCipherBlock(plain, ctx, controllerKey, deviceCert)
}

// NewCipherContext builds the CipherContext a controller would send (ECDH,
// AES-256-CFB). The hashes are the controller's names for the two
// certificates, given as they are (EVE never re-hashes a certificate);
// HashScheme says 16 bytes when the controller certificate's hash has 16.
func NewCipherContext(id string, deviceCertHash, controllerCertHash []byte) *evepb.CipherContext {
	scheme := evepb.HashAlgorithm_HASH_ALGORITHM_SHA256_32BYTES
	if len(controllerCertHash) == 16 {
		scheme = evepb.HashAlgorithm_HASH_ALGORITHM_SHA256_16BYTES
	}
	return &evepb.CipherContext{
		ContextId:          id,
		HashScheme:         scheme,
		KeyExchangeScheme:  evepb.KeyExchangeScheme_KEA_ECDH,
		EncryptionScheme:   evepb.EncryptionScheme_SA_AES_256_CFB,
		DeviceCertHash:     deviceCertHash,
		ControllerCertHash: controllerCertHash,
	}
}
