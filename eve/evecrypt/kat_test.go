package evecrypt

// Known-answer tests for decryption. The vectors are made by an independent
// implementation, the openssl command, following EVE's scheme as pillar
// implements it (pkg/pillar/evetpm/encryptdecypt.go: Sha256FromECPoint is
// sha256 over X and Y each left-padded to 32 bytes, AESDecrypt is AES-256
// CFB; pkg/pillar/cipher/handlecipher.go checks sha256(plaintext) against
// clearTextSha256) and docs/OBJECT-LEVEL-ENCRYPTION.md (ECDH, SHA-256 KDF).
// evelet's own encryptor is not involved.

import (
	"bytes"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"flag"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/lf-edge/evelet/eve/evecfg"
	"github.com/lf-edge/evelet/eve/evecfg/evepb"
)

var writeKAT = flag.Bool("write-kat", false, "regenerate testdata/kat-leading-zero.json with openssl")

const katFile = "testdata/kat-leading-zero.json"

// katVector is one decryption known answer. Everything in it was computed by
// openssl; the test decrypts it with evelet's code.
type katVector struct {
	Comment           string
	DeviceKeyPEM      string // the device's ECDH key (SEC 1 PEM, as openssl ecparam writes it)
	ControllerCertPEM string // the controller's ECDH certificate (openssl req -x509)
	SharedX, SharedY  string // hex, 32 bytes each: device key x controller public key
	AESKey            string // hex, sha256(X || Y)
	IV                string // hex, CipherBlock.initialValue
	CipherData        string // hex, openssl enc -aes-256-cfb
	ClearTextSha256   string // hex, openssl dgst -sha256 of the plaintext
	ClusterToken      string // EncryptionBlock.cluster_token inside the plaintext
}

func needOpenSSL(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed (sh hack/install-prereqs.sh installs it): no independent vectors")
	}
	return p
}

func runOpenSSL(t *testing.T, dir string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("openssl", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("openssl %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// opensslSharedPoint returns the full ECDH point devKey x ctlKey's public key,
// computed by openssl. `openssl pkeyutl -derive` gives X only, and EVE's KDF
// needs Y too, so openssl also computes the public key of the scalar
// d_dev*d_ctl mod n, which is that same point (d_dev*(d_ctl*G)); both X must
// agree. The only arithmetic done here is that product modulo the group
// order n, with math/big.
func opensslSharedPoint(t *testing.T, dir, devKey, ctlKey string) (x, y []byte) {
	t.Helper()
	runOpenSSL(t, dir, "ec", "-in", ctlKey, "-pubout", "-out", ctlKey+".pub")
	derived := runOpenSSL(t, dir, "pkeyutl", "-derive", "-inkey", devKey, "-peerkey", ctlKey+".pub")
	if len(derived) != 32 {
		t.Fatalf("openssl pkeyutl -derive gave %d bytes", len(derived))
	}
	dDev, dCtl := scalarOf(t, filepath.Join(dir, devKey)), scalarOf(t, filepath.Join(dir, ctlKey))
	s := new(big.Int).Mul(dDev, dCtl)
	s.Mod(s, elliptic.P256().Params().N)
	// SEC 1 ECPrivateKey without the optional public key, so openssl must
	// compute it: SEQUENCE{INTEGER 1, OCTET STRING(32) s, [0]{OID prime256v1}}.
	der := []byte{0x30, 0x31, 0x02, 0x01, 0x01, 0x04, 0x20}
	der = append(der, s.FillBytes(make([]byte, 32))...)
	der = append(der, 0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07)
	if err := os.WriteFile(filepath.Join(dir, "product.der"), der, 0o600); err != nil {
		t.Fatal(err)
	}
	spki := runOpenSSL(t, dir, "ec", "-inform", "DER", "-in", "product.der", "-pubout", "-outform", "DER")
	if len(spki) < 65 || spki[len(spki)-65] != 0x04 {
		t.Fatalf("openssl public key: unexpected SubjectPublicKeyInfo % x", spki)
	}
	point := spki[len(spki)-65:]
	x, y = point[1:33], point[33:]
	if !bytes.Equal(x, derived) {
		t.Fatalf("openssl: X of d_dev*d_ctl*G %x differs from pkeyutl -derive %x", x, derived)
	}
	return x, y
}

// scalarOf reads the private scalar of an openssl-written EC key.
func scalarOf(t *testing.T, path string) *big.Int {
	t.Helper()
	k, err := ParseDeviceKey(readFile(t, path))
	if err != nil {
		t.Fatal(err)
	}
	return k.D
}

// makeVector builds one vector with openssl only: keys, certificate, shared
// point, KDF, AES-256-CFB, plaintext hash. ctlKey is regenerated each call.
func makeVector(t *testing.T, dir, token string) katVector {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, "dev.key")); err != nil {
		runOpenSSL(t, dir, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "dev.key")
	}
	runOpenSSL(t, dir, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ctl.key")
	runOpenSSL(t, dir, "req", "-new", "-x509", "-key", "ctl.key", "-subj", "/CN=kat controller ecdh", "-days", "36500", "-out", "ctl.pem")
	x, y := opensslSharedPoint(t, dir, "dev.key", "ctl.key")
	if err := os.WriteFile(filepath.Join(dir, "xy.bin"), append(append([]byte{}, x...), y...), 0o600); err != nil {
		t.Fatal(err)
	}
	key := runOpenSSL(t, dir, "dgst", "-sha256", "-binary", "xy.bin")
	plain, err := proto.Marshal(&evepb.EncryptionBlock{ClusterToken: token})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "plain.bin"), plain, 0o600); err != nil {
		t.Fatal(err)
	}
	iv := make([]byte, 16)
	if _, err := rand.Read(iv); err != nil {
		t.Fatal(err)
	}
	ct := runOpenSSL(t, dir, "enc", "-aes-256-cfb", "-K", hex.EncodeToString(key), "-iv", hex.EncodeToString(iv), "-in", "plain.bin")
	sum := runOpenSSL(t, dir, "dgst", "-sha256", "-binary", "plain.bin")
	return katVector{
		DeviceKeyPEM:      string(readFile(t, filepath.Join(dir, "dev.key"))),
		ControllerCertPEM: string(readFile(t, filepath.Join(dir, "ctl.pem"))),
		SharedX:           hex.EncodeToString(x),
		SharedY:           hex.EncodeToString(y),
		AESKey:            hex.EncodeToString(key),
		IV:                hex.EncodeToString(iv),
		CipherData:        hex.EncodeToString(ct),
		ClearTextSha256:   hex.EncodeToString(sum),
		ClusterToken:      token,
	}
}

// checkVector decrypts v with evelet's code, through the same entry point
// the agent uses (DecryptEncryptionBlock), and checks every intermediate.
func checkVector(t *testing.T, v katVector) {
	t.Helper()
	devKey, err := ParseDeviceKey([]byte(v.DeviceKeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	ctlCert, err := ParseControllerCert([]byte(v.ControllerCertPEM))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := certKey(ctlCert, "controller")
	if err != nil {
		t.Fatal(err)
	}
	x, y, err := sharedPoint(devKey, pub)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(x.FillBytes(make([]byte, 32))) + hex.EncodeToString(y.FillBytes(make([]byte, 32))); got != v.SharedX+v.SharedY {
		t.Fatalf("shared point %s, openssl says %s%s", got, v.SharedX, v.SharedY)
	}
	key, err := DeriveKey(devKey, pub)
	if err != nil || hex.EncodeToString(key[:]) != v.AESKey {
		t.Fatalf("AES key %x (%v), openssl says %s", key, err, v.AESKey)
	}
	unhex := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	block := &evepb.CipherBlock{CipherContextId: "kat", InitialValue: unhex(v.IV), CipherData: unhex(v.CipherData), ClearTextSha256: unhex(v.ClearTextSha256)}
	ctx := NewCipherContext("kat", nil, []byte{1})
	eb, err := DecryptEncryptionBlock(block, ctx, devKey, ctlCert)
	if err != nil {
		t.Fatal(err)
	}
	if eb.GetClusterToken() != v.ClusterToken {
		t.Fatalf("cluster token %q, want %q", eb.GetClusterToken(), v.ClusterToken)
	}
}

// TestDecryptOpenSSLVectors: fresh vectors made by openssl at test time.
func TestDecryptOpenSSLVectors(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	for i := 0; i < 3; i++ {
		v := makeVector(t, dir, "K10"+strings.Repeat("0123456789abcdef", 4)+"::abcdef.0123456789abcdef")
		checkVector(t, v)
	}
}

// TestDecryptFixedVectorLeadingZero: a vector committed to testdata, made by
// openssl (go test -run TestDecryptFixedVectorLeadingZero -write-kat), whose
// shared point has a coordinate with a leading zero byte: the case where
// EVE's padding (rsCombinedBytes pads X and Y to 32 bytes each) matters.
// It needs no openssl to run, so the scheme stays pinned everywhere.
func TestDecryptFixedVectorLeadingZero(t *testing.T) {
	if *writeKAT {
		needOpenSSL(t)
		dir := t.TempDir()
		for i := 0; ; i++ {
			if i > 4000 {
				t.Fatal("no shared point with a short coordinate found")
			}
			v := makeVector(t, dir, "abcdef.0123456789abcdef")
			if !strings.HasPrefix(v.SharedX, "00") && !strings.HasPrefix(v.SharedY, "00") {
				continue
			}
			v.Comment = "Made by openssl (ecparam, req -x509, pkeyutl -derive, ec, dgst -sha256, enc -aes-256-cfb) " +
				"via eve/evecrypt/kat_test.go -write-kat; a shared coordinate starts with a zero byte."
			b, err := json.MarshalIndent(v, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(katFile, append(b, '\n'), 0o644); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	var v katVector
	if err := json.Unmarshal(readFile(t, katFile), &v); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(v.SharedX, "00") && !strings.HasPrefix(v.SharedY, "00") {
		t.Fatalf("%s: no coordinate with a leading zero byte", katFile)
	}
	checkVector(t, v)
	// The unpadded derivation gives another key: the vector tells them apart.
	xb, _ := hex.DecodeString(v.SharedX)
	yb, _ := hex.DecodeString(v.SharedY)
	if k := legacyKey(new(big.Int).SetBytes(xb), new(big.Int).SetBytes(yb)); hex.EncodeToString(k[:]) == v.AESKey {
		t.Fatal("padded and unpadded keys agree: the vector does not pin the padding")
	}
}

// TestCheckpointWithUnparseableSenderCert: EVE never parses
// AuthContainer.senderCert (field 5) of a config it receives (pillar
// controllerconn/authen.go compares senderCertHash with the saved signing
// certificate's hash), so a checkpoint whose senderCert is garbage must
// still give its config and decrypt its cluster token.
func TestCheckpointWithUnparseableSenderCert(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	v := makeVector(t, dir, "abcdef.0123456789abcdef")
	unhex := func(s string) []byte { b, _ := hex.DecodeString(s); return b }
	cfg := &evepb.EdgeDevConfig{
		Id:             &evepb.UUIDandVersion{Uuid: "6ba7b810-9dad-11d1-80b4-00c04fd430c8", Version: "1"},
		CipherContexts: []*evepb.CipherContext{NewCipherContext("kat", nil, []byte{1})},
		Cluster: &evepb.EdgeNodeCluster{ClusterName: "c", EncryptedClusterToken: &evepb.CipherBlock{
			CipherContextId: "kat", InitialValue: unhex(v.IV), CipherData: unhex(v.CipherData), ClearTextSha256: unhex(v.ClearTextSha256)}},
	}
	payload, err := proto.Marshal(&evepb.ConfigResponse{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	for name, sender := range map[string][]byte{
		"pem with junk body": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")}),
		"random bytes":       {0xde, 0xad, 0xbe, 0xef},
		"a private key":      pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{1}}),
	} {
		t.Run(name, func(t *testing.T) {
			data, err := proto.Marshal(&evepb.AuthContainer{
				ProtectedPayload: &evepb.AuthBody{Payload: payload},
				Algo:             evepb.HashAlgorithm_HASH_ALGORITHM_SHA256_32BYTES,
				SenderCertHash:   make([]byte, 32),
				SignatureHash:    make([]byte, 64),
				SenderCert:       sender,
			})
			if err != nil {
				t.Fatal(err)
			}
			cp, err := evecfg.ParseCheckpoint(data)
			if err != nil {
				t.Fatalf("checkpoint refused for its senderCert: %v", err)
			}
			cctx, err := cp.CipherContext(cp.Cluster().GetEncryptedClusterToken().GetCipherContextId())
			if err != nil {
				t.Fatal(err)
			}
			devKey, _ := ParseDeviceKey([]byte(v.DeviceKeyPEM))
			ctlCert, _ := ParseControllerCert([]byte(v.ControllerCertPEM))
			eb, err := DecryptEncryptionBlock(cp.Cluster().GetEncryptedClusterToken(), cctx, devKey, ctlCert)
			if err != nil || eb.GetClusterToken() != v.ClusterToken {
				t.Fatalf("token %q, %v", eb.GetClusterToken(), err)
			}
		})
	}
}
