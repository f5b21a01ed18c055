package agent

import (
	"encoding/json"
	"os"
	"testing"

	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/cni/eveni"
)

// TestEveNISettingsFollowOwner: the plugin's settings file lists exactly
// the owner's NIs, none by default.
func TestEveNISettingsFollowOwner(t *testing.T) {
	h := newHarness(t, nil, nil)
	h.start()
	read := func() eveni.Settings {
		var s eveni.Settings
		b, err := os.ReadFile(h.a.cfg.EveNISettingsFile())
		if err == nil {
			err = json.Unmarshal(b, &s)
		}
		if err != nil {
			return eveni.Settings{}
		}
		return s
	}
	h.eventually("settings with no NI", func() bool {
		s := read()
		return s.StateDir != "" && s.EVERun == "/run" && s.Allowed != nil && len(s.Allowed) == 0
	})
	h.send(intent.Update{ConfigItems: map[string]string{"evelet.policy.network-instances": "lan=10.1.0.200-10.1.0.210,ext"}})
	h.eventually("settings with lan and ext", func() bool {
		s := read()
		return len(s.Allowed) == 2 && s.Allowed[0].NetworkInstance == "lan" && s.Allowed[0].ReservedEnd.String() == "10.1.0.210" &&
			s.Allowed[1].NetworkInstance == "ext" && s.Allowed[1].ReservedStart == nil
	})
}
