package meta

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestWithNodeSettings(t *testing.T) {
	in := []byte(`{"cniVersion":"1.1.0","name":"n","plugins":[
	  {"type":"eve-ni","networkInstance":"ni1","args":{"cni":{"keep":1}}},
	  {"type":"tuning"}]}`)
	out, err := withNodeSettings(in, map[string]any{"k": "v"}, "/run/evelet/eve-ni.json", nil)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	if m.Plugins[0]["eveniConfig"] != "/run/evelet/eve-ni.json" || m.Plugins[1]["eveniConfig"] != nil || m.Plugins[0]["defaultRoute"] != nil {
		t.Fatalf("eveniConfig: %v", m.Plugins)
	}
	want0 := map[string]any{"cni": map[string]any{"keep": float64(1), "k": "v"}}
	want1 := map[string]any{"cni": map[string]any{"k": "v"}}
	if !reflect.DeepEqual(m.Plugins[0]["args"], want0) || !reflect.DeepEqual(m.Plugins[1]["args"], want1) {
		t.Fatalf("args: %v / %v", m.Plugins[0]["args"], m.Plugins[1]["args"])
	}
}

// A pod's "default-route" switches eve-ni's own defaultRoute: on for the
// chosen network, off for the others, over what the NAD said.
func TestWithNodeSettingsDefaultRoute(t *testing.T) {
	in := []byte(`{"cniVersion":"1.1.0","name":"n","plugins":[
	  {"type":"eve-ni","networkInstance":"ni1","defaultRoute":true},{"type":"tuning"}]}`)
	for _, want := range []bool{true, false} {
		out, err := withNodeSettings(in, nil, "", &want)
		if err != nil {
			t.Fatal(err)
		}
		var m struct {
			Plugins []map[string]any `json:"plugins"`
		}
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatal(err)
		}
		if m.Plugins[0]["defaultRoute"] != want || m.Plugins[1]["defaultRoute"] != nil {
			t.Fatalf("want eve-ni defaultRoute %v only: %v", want, m.Plugins)
		}
	}
}

// A key in another letter case beside the node's would be the one Go
// decodes in eve-ni (the last of two matching keys wins, and the tenant's
// sorts after the node's): the node's value replaces it in every case.
func TestWithNodeSettingsReplacesKeysInAnyCase(t *testing.T) {
	in := []byte(`{"cniVersion":"1.1.0","name":"n","plugins":[
	  {"type":"eve-ni","networkInstance":"ni1","eveniconfig":"../../x.json","DefaultRoute":true,"Args":{"CNI":{"keep":1}}}]}`)
	no := false
	out, err := withNodeSettings(in, map[string]any{"k": "v"}, "/run/evelet/eve-ni.json", &no)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	p := m.Plugins[0]
	want := map[string]any{"type": "eve-ni", "networkInstance": "ni1", "eveniConfig": "/run/evelet/eve-ni.json", "defaultRoute": false,
		"args": map[string]any{"cni": map[string]any{"keep": float64(1), "k": "v"}}}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("got %v, want %v", p, want)
	}
	var dec struct {
		EveniConfig  string `json:"eveniConfig"`
		DefaultRoute bool   `json:"defaultRoute"`
	}
	if err := json.Unmarshal(mustPlugin(t, out), &dec); err != nil || dec.EveniConfig != "/run/evelet/eve-ni.json" || dec.DefaultRoute {
		t.Fatalf("eve-ni would decode %+v (%v)", dec, err)
	}
}

func mustPlugin(t *testing.T, list []byte) []byte {
	t.Helper()
	var m struct {
		Plugins []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(list, &m); err != nil {
		t.Fatal(err)
	}
	return m.Plugins[0]
}
