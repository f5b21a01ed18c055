package bootstrap

import (
	"strings"
	"testing"
)

func TestMaterialNetworkToken(t *testing.T) {
	m := Material{APIServer: "https://10.0.0.1:6443", Token: "abcdef.0123456789abcdef",
		CACertHashes: []string{"sha256:" + strings.Repeat("ab", 32)}, NetworkToken: "eyJhbGciOi.x.y"}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"a b", "a\nb", strings.Repeat("a", 16<<10+1)} {
		m.NetworkToken = bad
		if err := m.Validate(); err == nil || !strings.Contains(err.Error(), "networkToken") {
			t.Fatalf("%q: %v", bad[:min(len(bad), 8)], err)
		}
	}
}
