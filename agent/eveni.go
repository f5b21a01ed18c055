package agent

import (
	"encoding/json"

	"github.com/lf-edge/evelet/cni/eveni"
	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/internal/atomicfile"
	"github.com/lf-edge/evelet/internal/layout"
	"github.com/lf-edge/evelet/policy"
)

// EveNISettingsFile is the eve-ni CNI plugin's settings file
// (eveni.DefaultSettingsPath with the default run dir).
func (c *Config) EveNISettingsFile() string { return layout.Run{Dir: c.RunDir}.EveNISettings() }

// eveRoot is where EVE's pubsub lives (the device's when unset).
func (c *Config) eveRoot() pubsub.Root {
	if c.EVERoot.Run == "" {
		return pubsub.DeviceRoot
	}
	return c.EVERoot
}

// niGrants turns the owner's evelet.policy.network-instances into the
// plugin's grants.
func niGrants(p policy.Policy) []eveni.Grant {
	out := []eveni.Grant{}
	for _, g := range p.NetworkInstanceGrants() {
		out = append(out, eveni.Grant{NetworkInstance: g.NI, ReservedStart: g.ReservedStart, ReservedEnd: g.ReservedEnd})
	}
	return out
}

// writeEveNISettings gives the eve-ni plugin the owner's current list of
// NIs (empty: the plugin refuses every NI) and wakes the node-label loop.
func (a *Agent) writeEveNISettings() {
	a.policyFileMu.Lock()
	defer a.policyFileMu.Unlock()
	s := eveni.Settings{
		EVERun:   a.cfg.eveRoot().Run,
		StateDir: layout.State{Dir: a.cfg.StateDir}.EveNI(),
		Allowed:  niGrants(a.policy()),
	}
	if a.dhcpDaemon() != "" {
		s.DHCPSocket = a.cfg.DHCPSocket()
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err == nil {
		err = atomicfile.WriteFile(a.cfg.EveNISettingsFile(), b, 0o644)
	}
	if err != nil {
		a.log.WithError(err).Error("eve-ni settings not written; pods cannot attach to EVE network instances")
	}
	select {
	case a.niKick <- struct{}{}:
	default:
	}
}
