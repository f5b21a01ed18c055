package evecrypt

import (
	"strings"
	"testing"
)

// The envelope may carry the evelet-network token (docs/networks.md) next
// to either join form; it reaches the join material and never String().
func TestEnvelopeNetworkToken(t *testing.T) {
	pin := "sha256:" + "ab0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"[:64]
	for _, payload := range []string{
		`{"token":"abcdef.0123456789abcdef","caCertHashes":["` + pin + `"],"apiServer":"https://10.0.0.1:6443","networkToken":"eyJhbGciOi.net.tok"}`,
		"token: abcdef.0123456789abcdef\ncaCertHashes: [\"" + pin + "\"]\nnetworkToken: eyJhbGciOi.net.tok\n",
	} {
		tok, err := ParseTokenPayload(payload)
		if err != nil {
			t.Fatal(err)
		}
		if tok.NetworkToken != "eyJhbGciOi.net.tok" || tok.Material().NetworkToken != "eyJhbGciOi.net.tok" {
			t.Fatalf("network token lost: %q / %q", tok.NetworkToken, tok.Material().NetworkToken)
		}
		if s := tok.String(); strings.Contains(s, "net.tok") {
			t.Fatalf("String() shows the network token: %s", s)
		}
	}
	// Without it, formats that worked before still work.
	tok, err := ParseTokenPayload(`{"token":"abcdef.0123456789abcdef","caCertHashes":["` + pin + `"]}`)
	if err != nil || tok.NetworkToken != "" {
		t.Fatalf("%v %+v", err, tok)
	}
}
