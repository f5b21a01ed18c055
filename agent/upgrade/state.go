package upgrade

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/internal/atomicfile"
)

// Phase is where a cycle stands.
type Phase string

const (
	// PhaseIdle: nothing pending.
	PhaseIdle Phase = ""
	// PhaseDraining: cordoned (or cordoning) and evicting.
	PhaseDraining Phase = "Draining"
	// PhaseDrained: the node is empty; EVE may reboot.
	PhaseDrained Phase = "Drained"
	// PhaseFailed: the drain gave up (FailedCordon or FailedDrain); the
	// node stays cordoned until EVE withdraws its request or reboots.
	PhaseFailed Phase = "Failed"
	// PhaseRebooted: the device came back; waiting for the node to be
	// Ready before uncordoning.
	PhaseRebooted Phase = "Rebooted"
)

// State is what spans the reboot (and a kill of the agent): written to
// the state root temp-then-rename on every change.
type State struct {
	// Node the cycle is for: a state left by another cluster's node is
	// ignored.
	Node  string
	Phase Phase
	// Key identifies the request that started the cycle (see request.key).
	Key       string
	Trigger   string
	Requester pubsub.DrainRequester
	// RequestedAt is EVE's time for a NodeDrainRequest, else when evelet
	// noticed.
	RequestedAt time.Time
	// FromVersion ran when the request came; ToVersion is the version EVE
	// activates ("" for a reboot without an OS change).
	FromVersion, ToVersion string
	// ContentTreeUUID is the BaseOsConfig the update came from, if known.
	ContentTreeUUID string
	// WeCordoned: evelet set unschedulable (an admin's cordon is never
	// undone). Written before the cordon is sent.
	WeCordoned bool
	Attempt    int
	// Status is the last NodeDrainStatus published.
	Status pubsub.DrainStatus
	// LastError is why the last attempt failed.
	LastError string `json:",omitempty"`
	// SawDrainRequest: this EVE build asks before rebooting (a
	// NodeDrainRequest was seen), so early signals do not start a drain.
	SawDrainRequest bool `json:",omitempty"`
	// Done lists finished cycles' update versions that must not start a
	// new cycle from the early signals (a fallback leaves BaseOsConfig
	// activating the version that failed), with the retry counter then.
	Done map[string]uint32 `json:",omitempty"`
}

func (s *State) active() bool { return s.Phase != PhaseIdle }

func loadState(path string) (State, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return State{}, nil
	}
	if err != nil {
		return State{}, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return State{}, fmt.Errorf("upgrade state %s: %w", path, err)
	}
	return s, nil
}

func saveState(path string, s State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, b, 0o600)
}
