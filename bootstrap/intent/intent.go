// Package intent holds the join intent a Source delivers to the agent. It is
// a leaf: the agent and every Source (eve, the join file) import it,
// and it imports neither.
package intent

import (
	"context"
	"fmt"

	"github.com/lf-edge/evelet/bootstrap"
)

// Join is everything the agent needs to make this device a node of a
// cluster. Where it comes from (a file today, the EVE controller through
// zedagent next) is a Source's business.
type Join struct {
	bootstrap.Material `json:",inline"`
	// NodeName is the Kubernetes node name (RFC 1123 subdomain).
	NodeName string `json:"nodeName"`
	// DeviceUUID is the EVE device id; it becomes a label and the provider ID.
	DeviceUUID string `json:"deviceUUID"`
	// OSVersion is the running EVE version, exposed as a node label.
	OSVersion string `json:"osVersion,omitempty"`
	// NodeIP optionally pins the address the node reports.
	NodeIP string `json:"nodeIP,omitempty"`
}

// Validate checks the join intent without touching the network.
func (j *Join) Validate() error {
	if j.NodeName == "" {
		return &bootstrap.PermanentError{Err: fmt.Errorf("join: nodeName is empty")}
	}
	if j.DeviceUUID == "" {
		return &bootstrap.PermanentError{Err: fmt.Errorf("join: deviceUUID is empty")}
	}
	return j.Material.Validate()
}

// Update is what a Source reports: the current join intent, or an error
// reading it. Join == nil with Err == nil means "not in a cluster".
type Update struct {
	Join *Join
	// ConfigItems are the device owner's "evelet." settings (guardrail
	// policy knobs among them). They are read on their own path and apply
	// even when Err is set: the join failing must not freeze the owner's
	// guardrails. nil with Err set: the Source could not read them either
	// (the agent keeps the ones it has); nil without Err: the Source has none.
	ConfigItems map[string]string
	Err         error
}

// Source delivers join intent. Watch sends the current state first and
// then every change; it closes the channel when ctx ends.
type Source interface {
	Name() string
	Watch(ctx context.Context) <-chan Update
}
