package tenantjson

import (
	"encoding/json"
	"strings"
	"testing"
)

// The reason for the package: Go decodes a key in any letter case into
// the same field, and the last one wins.
func TestFoldMatchesEncodingJSON(t *testing.T) {
	var v struct {
		EveniConfig string `json:"eveniConfig"`
	}
	for _, k := range []string{"eveniconfig", "EVENICONFIG", "eveniConfıg", "eveniConfig"} {
		v.EveniConfig = ""
		_ = json.Unmarshal([]byte(`{"`+k+`":"x"}`), &v)
		if got := v.EveniConfig == "x"; got != EqualKey(k, "eveniConfig") {
			t.Errorf("key %q: encoding/json matches %v, EqualKey says %v", k, got, !got)
		}
	}
	// U+212A KELVIN SIGN folds to k in encoding/json as in EqualKey.
	if !EqualKey("\u212Aubeconfig", "kubeconfig") {
		t.Error("KELVIN SIGN does not fold to k")
	}
}

func TestCheckKeys(t *testing.T) {
	for _, ok := range []string{
		`{"a":1,"b":{"a":2}}`, `[{"a":1},{"a":1}]`, `"s"`, `{"plugins":[{"type":"x","ipam":{}}]}`,
	} {
		if err := CheckKeys([]byte(ok)); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for in, want := range map[string]string{
		`{"eveniConfig":"/x","eveniconfig":"../.."}`:        `$: keys "eveniConfig" and "eveniconfig"`,
		`{"plugins":[{"type":"x"},{"ipam":{"a":1,"A":2}}]}`: `$.plugins[1].ipam: keys "a" and "A"`,
		`{"a":1,"a":2}`: `keys "a" and "a"`,
		`{"daemonSocketPath":"x","DAEMONSOCKETPATH":"y"}`: `keys "daemonSocketPath" and "DAEMONSOCKETPATH"`,
		`{"a":1}{}`:                  `trailing data`,
		`{"a":`:                      `not valid JSON`,
		"{\"\u212Aey\":1,\"key\":2}": `keys`,
	} {
		err := CheckKeys([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", in, err, want)
		}
	}
}

func TestGetDeleteSet(t *testing.T) {
	m := map[string]any{"eveniconfig": "../x", "EveniConfig": "y", "type": "eve-ni"}
	if _, ok := Get(m, "eveniConfig"); !ok {
		t.Fatal("Get missed a key in another case")
	}
	Set(m, "eveniConfig", "/run/evelet/eve-ni.json")
	if len(m) != 2 || m["eveniConfig"] != "/run/evelet/eve-ni.json" {
		t.Fatalf("Set left %v", m)
	}
}

func TestPathProblem(t *testing.T) {
	for _, c := range []struct {
		key, val string
		bad      bool
	}{
		{"bridge", "br-b", false},
		{"subnet", "10.1.0.0/24", false},
		{"master", "eth0", false},
		{"x", "/etc/shadow", true},
		{"x", "../../etc", true},
		{"x", "a/../../b", true},
		{"x", "./here", true},
		{"eveniConfig", "eve-ni.json", true},
		{"eveniconfig", "run/evelet/x.json", true},
		{"daemonSocketPath", "dhcp.sock", true},
		{"dataDir", "leases", true},
		{"logFile", "x.log", true},
		{"name", "net-a", false},
	} {
		if got := PathProblem(c.key, c.val) != ""; got != c.bad {
			t.Errorf("%s=%q: refused %v, want %v", c.key, c.val, got, c.bad)
		}
	}
	var doc any
	_ = json.Unmarshal([]byte(`{"type":"eve-ni","ipam":{"routes":[{"dst":"0.0.0.0/0"}],"x":["ok","../../y"]}}`), &doc)
	if k, p := FindPath(doc); k != "ipam.x[1]" || p == "" {
		t.Fatalf("FindPath: %q %q", k, p)
	}
}
