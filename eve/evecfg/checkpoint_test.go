package evecfg

import (
	"crypto"
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

func selfSigned(t testing.TB, key crypto.Signer, cn string) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ecKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

type signStyle int

const (
	sigRS signStyle = iota
	sigASN1
	sigRSA
)

// signedCheckpoint builds checkpoint bytes the way a controller + zedagent
// would: ConfigResponse in AuthBody, signature over sha256(payload).
func signedCheckpoint(t testing.TB, cfg *evepb.EdgeDevConfig, key crypto.Signer, cert *x509.Certificate, style signStyle) []byte {
	t.Helper()
	payload, err := proto.Marshal(&evepb.ConfigResponse{Config: cfg, ConfigHash: "cfghash"})
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(payload)
	var sig []byte
	switch style {
	case sigRS:
		r, s, err := ecdsa.Sign(rand.Reader, key.(*ecdsa.PrivateKey), digest[:])
		if err != nil {
			t.Fatal(err)
		}
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
	case sigASN1:
		sig, err = ecdsa.SignASN1(rand.Reader, key.(*ecdsa.PrivateKey), digest[:])
	case sigRSA:
		sig, err = rsa.SignPKCS1v15(rand.Reader, key.(*rsa.PrivateKey), crypto.SHA256, digest[:])
	}
	if err != nil {
		t.Fatal(err)
	}
	auth := &evepb.AuthContainer{
		ProtectedPayload: &evepb.AuthBody{Payload: payload},
		Algo:             evepb.HashAlgorithm_HASH_ALGORITHM_SHA256_32BYTES,
		SenderCertHash:   CertHash(cert),
		SignatureHash:    sig,
		SenderCert:       pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
	}
	b, err := proto.Marshal(auth)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseAndVerify(t *testing.T) {
	key := ecKey(t)
	cert := selfSigned(t, key, "controller-signing")
	data := signedCheckpoint(t, fullConfig(), key, cert, sigRS)

	c, err := ParseCheckpoint(data)
	if err != nil {
		t.Fatal(err)
	}
	if c.SenderCert == nil || !c.SenderCert.Equal(cert) {
		t.Fatalf("sender cert not parsed")
	}
	if err := c.VerifySignature(cert); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if got := c.ConfigItems()["timer.config.interval"]; got != "60" {
		t.Errorf("config item = %q", got)
	}
	if c.Cluster().GetJoinServerIp() != "10.244.244.1" {
		t.Errorf("cluster = %v", c.Cluster())
	}
	if cc, err := c.CipherContext("ctx1"); err != nil || cc.GetContextId() != "ctx1" {
		t.Errorf("CipherContext(ctx1) = %v, %v", cc, err)
	}
	if _, err := c.CipherContext("nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), "ctx1") {
		t.Errorf("CipherContext(nope) error = %v", err)
	}
	if _, err := c.CipherContext(""); err == nil {
		t.Errorf("empty id accepted")
	}
	if c.DeviceUUID() != "6ba7b810-9dad-11d1-80b4-00c04fd430c8" {
		t.Errorf("device uuid %q", c.DeviceUUID())
	}
}

func TestNotInCluster(t *testing.T) {
	key := ecKey(t)
	cert := selfSigned(t, key, "c")
	cfg := fullConfig()
	cfg.Cluster = nil
	c, err := ParseCheckpoint(signedCheckpoint(t, cfg, key, cert, sigRS))
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster() != nil {
		t.Errorf("cluster should be nil")
	}
}

func TestVerifySignatureForms(t *testing.T) {
	ek := ecKey(t)
	ec := selfSigned(t, ek, "ec")
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rc := selfSigned(t, rk, "rsa")
	for name, tc := range map[string]struct {
		key   crypto.Signer
		cert  *x509.Certificate
		style signStyle
	}{
		"ecdsa r||s": {ek, ec, sigRS},
		"ecdsa asn1": {ek, ec, sigASN1},
		"rsa":        {rk, rc, sigRSA},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := ParseCheckpoint(signedCheckpoint(t, fullConfig(), tc.key, tc.cert, tc.style))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.VerifySignature(tc.cert); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestBadSignature(t *testing.T) {
	key := ecKey(t)
	cert := selfSigned(t, key, "controller")
	other := selfSigned(t, ecKey(t), "impostor")
	data := signedCheckpoint(t, fullConfig(), key, cert, sigRS)

	c, err := ParseCheckpoint(data)
	if err != nil {
		t.Fatal(err)
	}
	err = c.VerifySignature(other)
	if !errors.Is(err, ErrBadSignature) || !strings.Contains(err.Error(), "different one") {
		t.Errorf("wrong cert: %v", err)
	}
	if err := c.VerifySignature(nil); !errors.Is(err, ErrBadSignature) {
		t.Errorf("nil cert: %v", err)
	}

	// Tamper with the payload (the device name) after signing.
	c.Auth.ProtectedPayload.Payload = append([]byte(nil), c.Auth.ProtectedPayload.Payload...)
	p := c.Auth.ProtectedPayload.Payload
	i := strings.Index(string(p), "edge-17")
	p[i] = 'E'
	if err := c.VerifySignature(cert); !errors.Is(err, ErrBadSignature) {
		t.Errorf("tampered payload: %v", err)
	}

	c.Auth.SignatureHash = nil
	if err := c.VerifySignature(cert); !errors.Is(err, ErrNoSignature) {
		t.Errorf("unsigned: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	cfgBytes, _ := proto.Marshal(&evepb.ConfigResponse{ConfigHash: "x"})
	mk := func(m proto.Message) []byte { b, _ := proto.Marshal(m); return b }
	for name, tc := range map[string]struct {
		data []byte
		want error
	}{
		"empty file":     {nil, ErrEmpty},
		"no payload":     {mk(&evepb.AuthContainer{Algo: evepb.HashAlgorithm_HASH_ALGORITHM_SHA256_32BYTES}), ErrNoPayload},
		"empty payload":  {mk(&evepb.AuthContainer{ProtectedPayload: &evepb.AuthBody{}}), ErrNoPayload},
		"no config":      {mk(&evepb.AuthContainer{ProtectedPayload: &evepb.AuthBody{Payload: cfgBytes}}), ErrNoConfig},
		"truncated":      {[]byte{0x0a, 0x10, 0x0a}, ErrTruncated},
		"bad tag":        {[]byte{0x00, 0x01}, ErrMalformed},
		"text":           {[]byte("this is not a protobuf\n"), nil},
		"payload broken": {mk(&evepb.AuthContainer{ProtectedPayload: &evepb.AuthBody{Payload: []byte{0x0a, 0x05, 1}}}), ErrTruncated},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := ParseCheckpoint(tc.data)
			if err == nil {
				t.Fatalf("parsed: %v", c.Config)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
		})
	}
}

func TestBadSenderCert(t *testing.T) {
	key := ecKey(t)
	cert := selfSigned(t, key, "c")
	var auth evepb.AuthContainer
	if err := proto.Unmarshal(signedCheckpoint(t, fullConfig(), key, cert, sigRS), &auth); err != nil {
		t.Fatal(err)
	}
	auth.SenderCert = []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
	b, _ := proto.Marshal(&auth)
	// EVE ignores senderCert; the config stays usable, the reason is kept.
	if c, err := ParseCheckpoint(b); err != nil || c.SenderCert != nil || c.SenderCertErr == nil || !strings.Contains(c.SenderCertErr.Error(), "senderCert") {
		t.Fatalf("bad sender cert: %v", err)
	}
	// A DER sender cert is fine too.
	auth.SenderCert = cert.Raw
	b, _ = proto.Marshal(&auth)
	c, err := ParseCheckpoint(b)
	if err != nil || !c.SenderCert.Equal(cert) {
		t.Fatalf("DER sender cert: %v", err)
	}
}

// TestEveryPrefix: a checkpoint cut at any length must give an error or a
// valid parse, never a panic; cut inside the payload it must say truncated.
func TestEveryPrefix(t *testing.T) {
	key := ecKey(t)
	cert := selfSigned(t, key, "c")
	data := signedCheckpoint(t, fullConfig(), key, cert, sigRS)
	full, err := ParseCheckpoint(data)
	if err != nil {
		t.Fatal(err)
	}
	truncated := 0
	for i := 0; i < len(data); i++ {
		c, err := ParseCheckpoint(data[:i])
		if err == nil {
			// Only a cut exactly between two top-level fields parses, and
			// the payload (field 1) is then complete: what is missing is
			// trailing metadata (algo, hashes, signature, sender cert).
			if !proto.Equal(c.Response, full.Response) {
				t.Fatalf("prefix %d parsed into a different config", i)
			}
			continue
		}
		if errors.Is(err, ErrTruncated) {
			truncated++
		}
	}
	if truncated < len(data)/2 {
		t.Errorf("only %d of %d prefixes reported as truncated", truncated, len(data))
	}
	if _, err := ParseCheckpoint(data[:len(data)-1]); !errors.Is(err, ErrTruncated) {
		t.Errorf("one byte short: %v", err)
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestLoadFallback(t *testing.T) {
	key := ecKey(t)
	cert := selfSigned(t, key, "c")
	good := signedCheckpoint(t, fullConfig(), key, cert, sigRS)
	cfg2 := fullConfig()
	cfg2.DeviceName = "newer"
	newer := signedCheckpoint(t, cfg2, key, cert, sigRS)

	t.Run("main good", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "lastconfig")
		writeFile(t, p, newer)
		writeFile(t, p+".bak", good)
		c, err := LoadCheckpoint(p)
		if err != nil || c.Config.GetDeviceName() != "newer" || c.Path != p || c.PrimaryErr != nil {
			t.Fatalf("%v %v", c, err)
		}
	})
	t.Run("main truncated", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "lastconfig")
		writeFile(t, p, newer[:len(newer)/2])
		writeFile(t, p+".bak", good)
		c, err := LoadCheckpoint(p)
		if err != nil {
			t.Fatal(err)
		}
		if c.Path != p+".bak" || c.Config.GetDeviceName() != "edge-17" || !errors.Is(c.PrimaryErr, ErrTruncated) {
			t.Fatalf("path %s name %s primaryErr %v", c.Path, c.Config.GetDeviceName(), c.PrimaryErr)
		}
	})
	t.Run("main missing", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "lastconfig")
		writeFile(t, p+".bak", good)
		c, err := LoadCheckpoint(p)
		if err != nil || !errors.Is(c.PrimaryErr, os.ErrNotExist) {
			t.Fatalf("%v %v", c, err)
		}
	})
	t.Run("both bad", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "lastconfig")
		writeFile(t, p, newer[:10])
		writeFile(t, p+".bak", nil)
		_, err := LoadCheckpoint(p)
		var le *LoadError
		if !errors.As(err, &le) || le.NotExist() {
			t.Fatalf("error %v", err)
		}
		if !errors.Is(err, ErrTruncated) || !errors.Is(err, ErrEmpty) {
			t.Errorf("both reasons should be visible: %v", err)
		}
		if msg := err.Error(); !strings.Contains(msg, "truncated") || !strings.Contains(msg, "empty") || !strings.Contains(msg, ".bak") {
			t.Errorf("message: %s", msg)
		}
	})
	t.Run("none", func(t *testing.T) {
		_, err := LoadCheckpoint(filepath.Join(t.TempDir(), "lastconfig"))
		var le *LoadError
		if !errors.As(err, &le) || !le.NotExist() || !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("verified falls back on bad signature", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "lastconfig")
		impostor := ecKey(t)
		writeFile(t, p, signedCheckpoint(t, cfg2, impostor, cert, sigRS))
		writeFile(t, p+".bak", good)
		c, err := LoadVerifiedCheckpoint(p, cert)
		if err != nil {
			t.Fatal(err)
		}
		if c.Path != p+".bak" || !errors.Is(c.PrimaryErr, ErrBadSignature) {
			t.Fatalf("path %s primaryErr %v", c.Path, c.PrimaryErr)
		}
		if _, err := LoadCheckpoint(p); err != nil {
			t.Fatalf("unverified load should take the main file: %v", err)
		}
	})
}

func TestCertHashMatches(t *testing.T) {
	cert := selfSigned(t, ecKey(t), "c")
	der := sha256.Sum256(cert.Raw)
	p := CertHash(cert)
	for name, h := range map[string][]byte{"pem32": p, "pem16": p[:16], "der32": der[:], "der16": der[:16]} {
		if !CertHashMatches(cert, h) {
			t.Errorf("%s does not match", name)
		}
	}
	for name, h := range map[string][]byte{"empty": nil, "short": p[:8], "wrong": make([]byte, 32)} {
		if CertHashMatches(cert, h) {
			t.Errorf("%s matches", name)
		}
	}
}
