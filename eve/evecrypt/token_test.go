package evecrypt

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/lf-edge/evelet/bootstrap"
)

const (
	tokID     = "abcdef"
	tokSecret = "0123456789abcdef"
	tok       = tokID + "." + tokSecret
	caHex     = "7d0a6dd5c5f1d8e1f1e0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6"
)

const kubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: other
  cluster:
    server: https://other.example:6443
- name: prod
  cluster:
    server: https://192.0.2.10:6443
    certificate-authority-data: LS0tLS1CRUdJTi0tLS0t
contexts:
- name: ctx
  context:
    cluster: prod
    user: bootstrap
current-context: ctx
users:
- name: bootstrap
  user:
    token: abcdef.0123456789abcdef
`

func TestParseTokenAccepted(t *testing.T) {
	for name, tc := range map[string]struct {
		in   string
		want Token
	}{
		"k3s secure": {
			"K10" + caHex + "::" + tok,
			Token{Kind: KindK3sSecure, TokenID: tokID, TokenSecret: tokSecret, CAHashes: []string{"sha256:" + caHex}, CAHashKind: CAHashCertBundle},
		},
		"k3s secure, upper-case hash, whitespace": {
			"  K10" + strings.ToUpper(caHex) + "::" + tok + "\n",
			Token{Kind: KindK3sSecure, TokenID: tokID, TokenSecret: tokSecret, CAHashes: []string{"sha256:" + caHex}, CAHashKind: CAHashCertBundle},
		},
		"json envelope": {
			`{"token":"` + tok + `","caCertHashes":["sha256:` + caHex + `"],"apiServer":"https://192.0.2.10:6443"}`,
			Token{Kind: KindBootstrapToken, TokenID: tokID, TokenSecret: tokSecret, CAHashes: []string{"sha256:" + caHex}, CAHashKind: CAHashSPKI, APIServer: "https://192.0.2.10:6443"},
		},
		"yaml envelope, two pins, no server": {
			"token: " + tok + "\ncaCertHashes:\n- sha256:" + strings.ToUpper(caHex) + "\n- sha256:" + strings.Repeat("0", 64) + "\n",
			Token{Kind: KindBootstrapToken, TokenID: tokID, TokenSecret: tokSecret, CAHashes: []string{"sha256:" + caHex, "sha256:" + strings.Repeat("0", 64)}, CAHashKind: CAHashSPKI},
		},
		"envelope with a K10 token and a server": {
			`{"token":"K10` + caHex + `::` + tok + `","apiServer":"https://k3s.example:6443"}`,
			Token{Kind: KindK3sSecure, TokenID: tokID, TokenSecret: tokSecret, CAHashes: []string{"sha256:" + caHex}, CAHashKind: CAHashCertBundle, APIServer: "https://k3s.example:6443"},
		},
		"kubeconfig": {
			kubeconfig,
			Token{Kind: KindKubeconfig, APIServer: "https://192.0.2.10:6443", Kubeconfig: []byte(kubeconfig)},
		},
		"kubeconfig in an envelope": {
			fmt.Sprintf("{\"kubeconfig\": %q}", kubeconfig),
			Token{Kind: KindKubeconfig, APIServer: "https://192.0.2.10:6443", Kubeconfig: []byte(kubeconfig)},
		},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := ParseTokenPayload(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Fatalf("got  %s\nwant %s", got.Kind+" "+got.TokenID+" "+strings.Join(got.CAHashes, ",")+" "+got.APIServer,
					tc.want.Kind+" "+tc.want.TokenID+" "+strings.Join(tc.want.CAHashes, ",")+" "+tc.want.APIServer)
			}
			if s := got.String() + fmt.Sprintf("%v %#v %v %+v %s", got, got, *got, *got, *got); strings.Contains(s, tokSecret) {
				t.Fatalf("String() leaks the secret: %s", s)
			}
			if got.Kind != KindKubeconfig && got.BootstrapToken() != tok {
				t.Fatalf("BootstrapToken() = %q", got.BootstrapToken())
			}
		})
	}
}

// TestK3sServerTokensRefusedWithHowTo: what EVE-k controllers send today is
// a k3s server shared secret (pillar pkg/kube/kube-init/k3s/config.go writes
// it as k3s's "token:", and k3s keeps it as K10<hash>::server:<secret>). The
// error must say what to send instead and how to make it on kubeadm and k3s.
func TestK3sServerTokensRefusedWithHowTo(t *testing.T) {
	const secret = "Zq3vX9pLm2Rk7TbW8yHc4NfJ6sDg1aEu" // a controller-made shared secret
	for name, in := range map[string]string{
		"short (EVE-k)":    secret,
		"short with punct": "s3cr3t/Pa55+w0rd==",
		"k3s server full":  "K10" + caHex + "::server:" + secret,
		"k3s agent full":   "K10" + caHex + "::node:" + secret,
		"k3s bearer":       "K10" + caHex + "::" + secret,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseTokenPayload(in)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, want := range []string{"kubeadm token create --print-join-command", "k3s token create", "K10<ca-hash>::<id>.<secret>", `"caCertHashes"`, "docs/cluster-token.md"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not say %q: %v", want, err)
				}
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "Pa55") {
				t.Errorf("error leaks the secret: %v", err)
			}
		})
	}
}

// TestTokenMaterial: every accepted form becomes join material that passes
// the bootstrap side's own validation, with the pin in the right kind.
func TestTokenMaterial(t *testing.T) {
	for name, tc := range map[string]struct {
		in   string
		want bootstrap.Material
	}{
		"k3s secure": {"K10" + caHex + "::" + tok,
			bootstrap.Material{Token: tok, CABundleHashes: []string{"sha256:" + caHex}}},
		"envelope": {`{"token":"` + tok + `","caCertHashes":["sha256:` + caHex + `"],"apiServer":"https://192.0.2.10:6443"}`,
			bootstrap.Material{APIServer: "https://192.0.2.10:6443", Token: tok, CACertHashes: []string{"sha256:" + caHex}}},
		"envelope with a bundle hash": {`{"token":"` + tok + `","caBundleHashes":["sha256:` + caHex + `"]}`,
			bootstrap.Material{Token: tok, CABundleHashes: []string{"sha256:" + caHex}}},
		"kubeconfig": {kubeconfig, bootstrap.Material{Kubeconfig: kubeconfig}},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := ParseTokenPayload(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			m := got.Material()
			if !reflect.DeepEqual(m, tc.want) {
				t.Fatalf("material %+v, want %+v", m, tc.want)
			}
			if m.APIServer == "" && m.Kubeconfig == "" {
				m.APIServer = "https://192.0.2.10:6443"
			}
			if err := m.Validate(); err != nil {
				t.Fatalf("bootstrap refuses the material: %v", err)
			}
		})
	}
	if _, err := ParseTokenPayload(`{"token":"` + tok + `","caCertHashes":["sha256:` + caHex + `"],"caBundleHashes":["sha256:` + caHex + `"]}`); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Fatalf("both pin kinds: %v", err)
	}
}

func TestParseTokenRejected(t *testing.T) {
	for name, tc := range map[string]struct {
		in, want string
	}{
		"empty":                    {"  \n", "empty"},
		"bare token":               {tok, "without a CA pin"},
		"k3s user:password":        {"K10" + caHex + "::server:" + tokSecret + "xyz", "<user>:<password>"},
		"k3s short hash":           {"K10abcd::" + tok, "64 hex"},
		"k3s no separator":         {"K10" + caHex + tok, `no "::"`},
		"k3s bad creds":            {"K10" + caHex + "::" + "ABCDEF.0123456789ABCDEF", "not a bootstrap token"},
		"k3s short token":          {"K10" + caHex + "::" + tokSecret, "not a bootstrap token"},
		"envelope without pin":     {`{"token":"` + tok + `"}`, "at least one caCertHashes"},
		"envelope bad pin":         {`{"token":"` + tok + `","caCertHashes":["md5:1234"]}`, "not sha256"},
		"envelope spki-less pin":   {`{"token":"` + tok + `","caCertHashes":["` + caHex + `"]}`, "not sha256"},
		"envelope typo":            {`{"token":"` + tok + `","caCertHash":"sha256:` + caHex + `"}`, "unknown field"},
		"envelope http server":     {`{"token":"` + tok + `","caCertHashes":["sha256:` + caHex + `"],"apiServer":"http://x:6443"}`, "not an https URL"},
		"envelope bad token":       {`{"token":"abc.def","caCertHashes":["sha256:` + caHex + `"]}`, "not a bootstrap token"},
		"envelope both":            {fmt.Sprintf(`{"token":%q,"kubeconfig":%q}`, tok, kubeconfig), "both"},
		"envelope K10 + pins":      {`{"token":"K10` + caHex + `::` + tok + `","caCertHashes":["sha256:` + caHex + `"]}`, "hash different things"},
		"envelope nothing":         {`{"apiServer":"https://x:6443"}`, "neither"},
		"kubeconfig wrong kind":    {"apiVersion: v1\nkind: Pod\n", "want v1 Config"},
		"kubeconfig no clusters":   {"apiVersion: v1\nkind: Config\nclusters: []\n", "no clusters"},
		"kubeconfig http server":   {"apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster:\n    server: http://x\n", "not an https URL"},
		"random text":              {"hello world", "no format evelet understands"},
		"k3s plain password":       {tokSecret + tokSecret, "k3s server token"},
		"json array":               {`["` + tok + `"]`, "no format evelet understands"},
		"yaml scalar with a colon": {"token " + tok + ": x", "unknown field"},
		"broken kubeconfig":        {"apiVersion: v1\nkind: Config\nclusters: [\n", "not an object"},
		"broken json":              {`{"token": "` + tok + `", `, "not an object"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := ParseTokenPayload(tc.in)
			if err == nil {
				t.Fatalf("accepted: %v", got)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if strings.Contains(err.Error(), tokSecret) {
				t.Errorf("error leaks the secret: %v", err)
			}
		})
	}
	if _, err := ParseTokenPayload("x: " + strings.Repeat("a", MaxTokenPayload)); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("oversized payload: %v", err)
	}
	if _, err := ParseTokenPayload("???"); err == nil || !strings.Contains(err.Error(), "accepted formats") {
		t.Errorf("error should list the accepted formats: %v", err)
	}
}

var reTokenLike = regexp.MustCompile(`[a-z0-9]{6}\.([a-z0-9]{16})`)

// FuzzParseTokenPayload: never panics, never leaks a secret-shaped string
// into an error, and what it accepts is well-formed. Seeds live in
// testdata/fuzz/FuzzParseTokenPayload.
func FuzzParseTokenPayload(f *testing.F) {
	f.Add("K10" + caHex + "::" + tok)
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseTokenPayload(s)
		if err != nil {
			if got != nil {
				t.Fatalf("error with a token")
			}
			for _, m := range reTokenLike.FindAllStringSubmatch(s, -1) {
				if strings.Contains(err.Error(), m[1]) {
					t.Fatalf("error leaks %q: %v", m[1], err)
				}
			}
			return
		}
		switch got.Kind {
		case KindKubeconfig:
			if len(got.Kubeconfig) == 0 || !strings.HasPrefix(got.APIServer, "https://") {
				t.Fatalf("bad kubeconfig token: %v", got)
			}
		case KindK3sSecure, KindBootstrapToken:
			if !reTokenID.MatchString(got.TokenID) || !reTokenSecret.MatchString(got.TokenSecret) {
				t.Fatalf("bad token halves")
			}
			if len(got.CAHashes) == 0 || (got.CAHashKind != CAHashSPKI && got.CAHashKind != CAHashCertBundle) {
				t.Fatalf("token without pins: %v", got)
			}
			for _, h := range got.CAHashes {
				if !strings.HasPrefix(h, "sha256:") || !reHex64.MatchString(h[7:]) || strings.ToLower(h) != h {
					t.Fatalf("bad pin %q", h)
				}
			}
			if strings.Contains(got.String(), got.TokenSecret) {
				t.Fatalf("String() leaks the secret")
			}
		default:
			t.Fatalf("unknown kind %q", got.Kind)
		}
	})
}

// TestWriteTokenFuzzSeeds regenerates the committed seed corpus.
func TestWriteTokenFuzzSeeds(t *testing.T) {
	if os.Getenv("EVELET_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("set EVELET_WRITE_FUZZ_SEEDS=1 to rewrite testdata/fuzz/FuzzParseTokenPayload")
	}
	seeds := map[string]string{
		"k3s-secure":      "K10" + caHex + "::" + tok,
		"k3s-userpass":    "K10" + caHex + "::server:secretpassword",
		"bare-token":      tok,
		"json-envelope":   `{"token":"` + tok + `","caCertHashes":["sha256:` + caHex + `"],"apiServer":"https://192.0.2.10:6443"}`,
		"yaml-envelope":   "token: " + tok + "\ncaCertHashes:\n- sha256:" + caHex + "\n",
		"kubeconfig":      kubeconfig,
		"kubeconfig-json": `{"apiVersion":"v1","kind":"Config","clusters":[{"name":"a","cluster":{"server":"https://a:6443"}}]}`,
		"empty":           "",
		"garbage":         "\x00\xff: [",
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzParseTokenPayload")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, s := range seeds {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(fmt.Sprintf("go test fuzz v1\nstring(%q)\n", s)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
