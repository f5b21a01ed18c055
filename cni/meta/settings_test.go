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
