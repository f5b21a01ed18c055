package evecrypt

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/lf-edge/evelet/eve/evecfg/evepb"
)

func genKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func certFor(t testing.TB, pub any, signer any, cn string) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageKeyAgreement,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// pemHash is what a controller might name a certificate by: sha256 of Go's
// PEM encoding. Only the controller side (these tests) computes it.
func pemHash(c *x509.Certificate) []byte {
	h := sha256.Sum256(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	return h[:]
}

type party struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newParty(t testing.TB, cn string) party {
	k := genKey(t)
	return party{k, certFor(t, &k.PublicKey, k, cn)}
}

func TestRoundTrip(t *testing.T) {
	dev, ctl := newParty(t, "device-ecdh"), newParty(t, "controller-ecdh")
	ctx := NewCipherContext("ctx-1", pemHash(dev.cert), pemHash(ctl.cert))
	eb := &evepb.EncryptionBlock{ClusterToken: "K10" + strings.Repeat("ab", 32) + "::abcdef.0123456789abcdef", GzipRegistrationManifestYaml: []byte{0x1f, 0x8b}}
	block, err := EncryptEncryptionBlock(eb, ctx, ctl.key, dev.cert)
	if err != nil {
		t.Fatal(err)
	}
	if block.GetCipherContextId() != "ctx-1" || len(block.GetInitialValue()) != 16 || len(block.GetClearTextSha256()) != 32 {
		t.Fatalf("block: %v", block)
	}
	got, err := DecryptEncryptionBlock(block, ctx, dev.key, ctl.cert)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, eb) {
		t.Fatalf("got %v, want %v", got, eb)
	}
	// The block survives the wire (as a field of EdgeNodeCluster).
	b, _ := proto.Marshal(&evepb.EdgeNodeCluster{EncryptedClusterToken: block})
	var cl evepb.EdgeNodeCluster
	if err := proto.Unmarshal(b, &cl); err != nil {
		t.Fatal(err)
	}
	if _, err := DecryptCipherBlock(cl.GetEncryptedClusterToken(), ctx, dev.key, ctl.cert); err != nil {
		t.Fatal(err)
	}
}

// TestDeriveKeyIndependently recomputes the key from crypto/ecdh's X and
// the curve equation's two Y candidates: DeriveKey must be
// sha256(pad32(X) || pad32(Y)) for one of them, and symmetric.
func TestDeriveKeyIndependently(t *testing.T) {
	p := elliptic.P256().Params().P
	b := elliptic.P256().Params().B
	for i := 0; i < 20; i++ {
		a, c := genKey(t), genKey(t)
		k1, err := DeriveKey(a, &c.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		k2, err := DeriveKey(c, &a.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if k1 != k2 {
			t.Fatalf("not symmetric")
		}
		ea, _ := a.ECDH()
		ec, _ := c.PublicKey.ECDH()
		xb, err := ea.ECDH(ec)
		if err != nil {
			t.Fatal(err)
		}
		x := new(big.Int).SetBytes(xb)
		// y^2 = x^3 - 3x + b (mod p); p = 3 mod 4, so sqrt = v^((p+1)/4)
		rhs := new(big.Int).Exp(x, big.NewInt(3), p)
		rhs.Sub(rhs, new(big.Int).Mul(x, big.NewInt(3)))
		rhs.Add(rhs, b)
		rhs.Mod(rhs, p)
		y := new(big.Int).Exp(rhs, new(big.Int).Rsh(new(big.Int).Add(p, big.NewInt(1)), 2), p)
		match := false
		for _, yy := range []*big.Int{y, new(big.Int).Sub(p, y)} {
			buf := make([]byte, 64)
			copy(buf[:32], xb)
			yy.FillBytes(buf[32:])
			if sha256.Sum256(buf) == k1 {
				match = true
			}
		}
		if !match {
			t.Fatalf("DeriveKey is not sha256(X||Y) of the shared point")
		}
	}
}

// TestLeadingZeroCoordinate: with a shared X or Y below 2^248 the padded
// and the legacy (unpadded) derivations differ; both blocks decrypt.
func TestLeadingZeroCoordinate(t *testing.T) {
	dev := newParty(t, "device")
	var ctl party
	var x, y *big.Int
	for i := 0; ; i++ {
		if i > 5000 {
			t.Fatal("no short coordinate found")
		}
		ctl = newParty(t, "controller")
		var err error
		x, y, err = sharedPoint(dev.key, &ctl.key.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if len(x.Bytes()) < 32 || len(y.Bytes()) < 32 {
			break
		}
	}
	padded, err := DeriveKey(ctl.key, &dev.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	legacy := legacyKey(x, y)
	if padded == legacy {
		t.Fatal("padded and legacy keys should differ for a short coordinate")
	}
	ctx := NewCipherContext("c", pemHash(dev.cert), pemHash(ctl.cert))
	plain := []byte("cluster token bytes")
	for name, key := range map[string][32]byte{"padded": padded, "legacy": legacy} {
		iv := make([]byte, 16)
		ct, err := aesCFB(key[:], iv, plain, false)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(plain)
		block := &evepb.CipherBlock{CipherContextId: "c", InitialValue: iv, CipherData: ct, ClearTextSha256: sum[:]}
		got, err := DecryptCipherBlock(block, ctx, dev.key, ctl.cert)
		if err != nil || string(got) != string(plain) {
			t.Errorf("%s: %q %v", name, got, err)
		}
	}
}

func encrypted(t *testing.T) (dev, ctl party, ctx *evepb.CipherContext, block *evepb.CipherBlock) {
	t.Helper()
	dev, ctl = newParty(t, "device"), newParty(t, "controller")
	ctx = NewCipherContext("ctx", pemHash(dev.cert), pemHash(ctl.cert))
	var err error
	block, err = EncryptEncryptionBlock(&evepb.EncryptionBlock{ClusterToken: "abcdef.0123456789abcdef"}, ctx, ctl.key, dev.cert)
	if err != nil {
		t.Fatal(err)
	}
	return
}

func TestWrongScheme(t *testing.T) {
	dev, ctl, ctx, block := encrypted(t)
	for name, mod := range map[string]func(*evepb.CipherContext){
		"no key exchange": func(c *evepb.CipherContext) { c.KeyExchangeScheme = evepb.KeyExchangeScheme_KEA_NONE },
		"no encryption":   func(c *evepb.CipherContext) { c.EncryptionScheme = evepb.EncryptionScheme_SA_NONE },
		"future scheme":   func(c *evepb.CipherContext) { c.EncryptionScheme = 7 },
	} {
		t.Run(name, func(t *testing.T) {
			c := proto.Clone(ctx).(*evepb.CipherContext)
			mod(c)
			if _, err := DecryptCipherBlock(block, c, dev.key, ctl.cert); !errors.Is(err, ErrUnsupportedScheme) {
				t.Fatalf("decrypt: %v", err)
			}
			if _, err := EncryptCipherBlock([]byte("x"), c, ctl.key, dev.cert); !errors.Is(err, ErrUnsupportedScheme) {
				t.Fatalf("encrypt: %v", err)
			}
		})
	}
	if _, err := DecryptCipherBlock(block, nil, dev.key, ctl.cert); err == nil {
		t.Error("nil context accepted")
	}
}

func TestWrongDeviceKey(t *testing.T) {
	_, ctl, ctx, block := encrypted(t)
	other := genKey(t)
	_, err := DecryptCipherBlock(block, ctx, other, ctl.cert)
	if !errors.Is(err, ErrHashMismatch) || !strings.Contains(err.Error(), "clear-text hash mismatch") {
		t.Fatalf("error = %v", err)
	}
}

func TestWrongControllerCert(t *testing.T) {
	dev, _, ctx, block := encrypted(t)
	impostor := newParty(t, "impostor")
	if _, err := DecryptCipherBlock(block, ctx, dev.key, impostor.cert); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("error = %v", err)
	}
	rk, _ := rsa.GenerateKey(rand.Reader, 1024)
	rc := certFor(t, &rk.PublicKey, rk, "rsa")
	if _, err := DecryptCipherBlock(block, ctx, dev.key, rc); !errors.Is(err, ErrUnsupportedScheme) {
		t.Fatalf("rsa cert: %v", err)
	}
}

func TestTampered(t *testing.T) {
	dev, ctl, ctx, block := encrypted(t)
	for name, mod := range map[string]func(*evepb.CipherBlock){
		"clearTextSha256": func(b *evepb.CipherBlock) { b.ClearTextSha256[0] ^= 1 },
		"cipherData":      func(b *evepb.CipherBlock) { b.CipherData[len(b.CipherData)-1] ^= 1 },
		"initialValue":    func(b *evepb.CipherBlock) { b.InitialValue[0] ^= 1 },
	} {
		t.Run(name, func(t *testing.T) {
			b := proto.Clone(block).(*evepb.CipherBlock)
			mod(b)
			got, err := DecryptCipherBlock(b, ctx, dev.key, ctl.cert)
			if !errors.Is(err, ErrHashMismatch) || got != nil {
				t.Fatalf("got %q, %v", got, err)
			}
		})
	}
	for name, mod := range map[string]func(*evepb.CipherBlock){
		"no hash":       func(b *evepb.CipherBlock) { b.ClearTextSha256 = nil },
		"short iv":      func(b *evepb.CipherBlock) { b.InitialValue = b.InitialValue[:8] },
		"other context": func(b *evepb.CipherBlock) { b.CipherContextId = "other" },
	} {
		t.Run(name, func(t *testing.T) {
			b := proto.Clone(block).(*evepb.CipherBlock)
			mod(b)
			if _, err := DecryptCipherBlock(b, ctx, dev.key, ctl.cert); err == nil || errors.Is(err, ErrHashMismatch) {
				t.Fatalf("error = %v", err)
			}
		})
	}
}

func TestDecryptedNotEncryptionBlock(t *testing.T) {
	dev, ctl := newParty(t, "d"), newParty(t, "c")
	ctx := NewCipherContext("c", pemHash(dev.cert), pemHash(ctl.cert))
	block, err := EncryptCipherBlock([]byte{0xff, 0xff, 0xff}, ctx, ctl.key, dev.cert)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecryptEncryptionBlock(block, ctx, dev.key, ctl.cert); err == nil || !strings.Contains(err.Error(), "not an EncryptionBlock") {
		t.Fatalf("error = %v", err)
	}
}

func TestLoadDeviceKey(t *testing.T) {
	k := genKey(t)
	dir := t.TempDir()
	sec1, _ := x509.MarshalECPrivateKey(k)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(k)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384der, _ := x509.MarshalECPrivateKey(p384)
	rk, _ := rsa.GenerateKey(rand.Reader, 1024)
	rsader, _ := x509.MarshalPKCS8PrivateKey(rk)
	params := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}})
	for name, tc := range map[string]struct {
		data []byte
		ok   bool
	}{
		"sec1":             {pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), true},
		"sec1 with params": {append(params, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})...), true},
		"pkcs8":            {pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), true},
		"p384":             {pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: p384der}), false},
		"rsa":              {pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: rsader}), false},
		"garbage":          {[]byte("nope"), false},
		"broken":           {pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{1, 2}}), false},
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
			if err := os.WriteFile(p, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := LoadDeviceKey(p)
			if tc.ok {
				if err != nil || !got.Equal(k) {
					t.Fatalf("%v", err)
				}
			} else if err == nil {
				t.Fatalf("accepted")
			}
		})
	}
	if _, err := LoadDeviceKey(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
}

// TestFindControllerCertByRecordHash: the certificate is found by the
// CertHash its ControllerCert record carries, never by re-hashing. The
// records are shaped as Adam (lf-edge/adam pkg/server/apiHandlerv2.go
// getCertChain/certs) makes them: Cert is the PEM with the trailing newline
// trimmed, CertHash the first 16 bytes of sha256 over exactly those bytes.
// Neither sha256 of Go's PEM encoding nor of the DER equals that hash.
func TestFindControllerCertByRecordHash(t *testing.T) {
	a, b := newParty(t, "a"), newParty(t, "b")
	adam := func(c *x509.Certificate) ControllerCert {
		trimmed := []byte(strings.TrimSpace(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))))
		h := sha256.Sum256(trimmed)
		return ControllerCert{HashAlgo: 1, Type: 3, Cert: trimmed, CertHash: h[:16]}
	}
	recs := []ControllerCert{adam(a.cert), adam(b.cert)}
	got, err := FindControllerCert(recs, recs[1].CertHash)
	if err != nil || !got.Equal(b.cert) {
		t.Fatalf("by record hash: %v", err)
	}
	// A hash computed by re-encoding names nothing: the controller did not send it.
	der := sha256.Sum256(b.cert.Raw)
	for name, h := range map[string][]byte{"go pem": pemHash(b.cert), "der": der[:], "der/16": der[:16], "unknown": make([]byte, 16)} {
		if _, err := FindControllerCert(recs, h); err == nil || !strings.Contains(err.Error(), "no controller certificate with hash") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := FindControllerCert(recs, nil); err == nil {
		t.Error("empty hash matched")
	}
	// EVE skips unparseable CERTIFICATE blocks and uses the first good one.
	junk := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}})
	mixed := ControllerCert{Cert: append(junk, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.cert.Raw})...), CertHash: []byte{9}}
	if got, err := FindControllerCert([]ControllerCert{mixed}, []byte{9}); err != nil || !got.Equal(a.cert) {
		t.Errorf("skip junk block: %v", err)
	}
	bad := ControllerCert{Cert: junk, CertHash: []byte{7}}
	if _, err := FindControllerCert([]ControllerCert{bad}, []byte{7}); err == nil || !strings.Contains(err.Error(), "no parseable CERTIFICATE") {
		t.Errorf("junk only: %v", err)
	}
	if c, err := ParseControllerCert(a.cert.Raw); err != nil || !c.Equal(a.cert) {
		t.Errorf("DER: %v", err)
	}
	if one, err := ParseCertificates(a.cert.Raw); err != nil || len(one) != 1 {
		t.Errorf("ParseCertificates DER: %v", err)
	}
	if _, err := ParseCertificates([]byte("junk")); err == nil {
		t.Error("junk parsed")
	}
}

// TestDeviceSideWithRealECDH: the device side only needs crypto/ecdh-able
// keys; make sure a key generated through crypto/ecdh works too.
func TestDeviceSideWithRealECDH(t *testing.T) {
	ek, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(ek)
	if err != nil {
		t.Fatal(err)
	}
	// PKCS#8 of an ECDH key is an EC key: it parses back as ECDSA.
	k, err := ParseDeviceKey(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	ctl := newParty(t, "c")
	devCert := certFor(t, &k.PublicKey, ctl.key, "device")
	ctx := NewCipherContext("c", pemHash(devCert), pemHash(ctl.cert))
	block, err := EncryptCipherBlock([]byte("hello"), ctx, ctl.key, devCert)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecryptCipherBlock(block, ctx, k, ctl.cert); err != nil || string(got) != "hello" {
		t.Fatalf("%q %v", got, err)
	}
}
