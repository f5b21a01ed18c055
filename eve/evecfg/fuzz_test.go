package evecfg

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/lf-edge/evelet/eve/evecfg/evepb"
)

// FuzzParseCheckpoint: whatever the bytes, ParseCheckpoint returns an error
// or a usable Checkpoint, and never panics. Seeds live in
// testdata/fuzz/FuzzParseCheckpoint (regenerate with
// EVELET_WRITE_FUZZ_SEEDS=1 go test -run TestWriteFuzzSeeds).
func FuzzParseCheckpoint(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x00})
	key := ecKey(f)
	cert := selfSigned(f, key, "fuzz")
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseCheckpoint(data)
		if err != nil {
			if c != nil {
				t.Fatalf("error %v with a non-nil checkpoint", err)
			}
			if err.Error() == "" {
				t.Fatalf("empty error message")
			}
			return
		}
		if c.Config == nil || c.Response == nil || c.Auth == nil {
			t.Fatalf("parsed checkpoint with nil parts: %+v", c)
		}
		if len(c.Auth.GetProtectedPayload().GetPayload()) == 0 {
			t.Fatalf("parsed checkpoint with an empty payload")
		}
		_ = c.ConfigItems()
		_ = c.Cluster().GetEncryptedClusterToken().GetCipherData()
		_ = c.DeviceUUID()
		for _, cc := range c.Config.GetCipherContexts() {
			if _, err := c.CipherContext(cc.GetContextId()); err != nil && cc.GetContextId() != "" {
				t.Fatalf("CipherContext(%q): %v", cc.GetContextId(), err)
			}
		}
		if err := c.VerifySignature(cert); err == nil {
			t.Fatalf("random data verified with a fresh key")
		} else if !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrNoSignature) {
			t.Fatalf("VerifySignature: unexpected error class: %v", err)
		}
		// What parsed re-encodes and parses back to the same thing.
		again, err := proto.Marshal(c.Auth)
		if err != nil {
			t.Fatalf("re-marshal: %v", err)
		}
		c2, err := ParseCheckpoint(again)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if !proto.Equal(c2.Config, c.Config) {
			t.Fatalf("re-parse changed the config")
		}
	})
}

// TestWriteFuzzSeeds regenerates the committed seed corpus.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("EVELET_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("set EVELET_WRITE_FUZZ_SEEDS=1 to rewrite testdata/fuzz/FuzzParseCheckpoint")
	}
	// Seeds are kept small on purpose: the fuzzer minimizes every new
	// interesting input, and that is slow for kilobyte inputs.
	key := ecKey(t)
	cert := selfSigned(t, key, "seed-controller")
	small := &evepb.EdgeDevConfig{
		Id:          &evepb.UUIDandVersion{Uuid: "u", Version: "1"},
		ConfigItems: []*evepb.ConfigItem{{Key: "k", Value: "v"}},
		CipherContexts: []*evepb.CipherContext{{
			ContextId: "c", KeyExchangeScheme: evepb.KeyExchangeScheme_KEA_ECDH,
			EncryptionScheme: evepb.EncryptionScheme_SA_AES_256_CFB, ControllerCertHash: []byte{1, 2},
		}},
		Cluster: &evepb.EdgeNodeCluster{
			ClusterName: "n", JoinServerIp: "10.0.0.1", IsWorkerNode: true,
			EncryptedClusterToken: &evepb.CipherBlock{CipherContextId: "c", InitialValue: []byte{1}, CipherData: []byte{2}, ClearTextSha256: []byte{3}},
		},
	}
	signed := func(cfg *evepb.EdgeDevConfig, style signStyle) []byte {
		var auth evepb.AuthContainer
		if err := proto.Unmarshal(signedCheckpoint(t, cfg, key, cert, style), &auth); err != nil {
			t.Fatal(err)
		}
		auth.SenderCert = nil // keep seeds small; senderCert parsing is x509's
		auth.SenderCertHash = auth.SenderCertHash[:16]
		return mustMarshal(t, &auth)
	}
	valid := signed(small, sigRS)
	minimal := mustMarshal(t, &evepb.AuthContainer{ProtectedPayload: &evepb.AuthBody{
		Payload: mustMarshal(t, &evepb.ConfigResponse{Config: &evepb.EdgeDevConfig{}}),
	}})
	seeds := map[string][]byte{
		"valid":              valid,
		"valid-asn1":         signed(&evepb.EdgeDevConfig{DeviceName: "d"}, sigASN1),
		"minimal":            minimal,
		"truncated-half":     valid[:len(valid)/2],
		"truncated-one-byte": valid[:len(valid)-1],
		"empty":              {},
		"garbage":            []byte("not a protobuf at all\x00\xff"),
		"deep-length":        {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f},
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzParseCheckpoint")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range seeds {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func mustMarshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
