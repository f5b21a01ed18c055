package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/lf-edge/evelet/internal/layout"
	"os"
	"time"

	"github.com/lf-edge/evelet/internal/atomicfile"
)

// Phase is where the agent is in the node's life.
type Phase string

const (
	PhaseStarting Phase = "Starting"
	PhaseNoJoin   Phase = "NotJoined" // no join intent
	PhaseJoining  Phase = "Joining"   // discovery / waiting for the apiserver
	PhaseRunning  Phase = "Running"   // kubelet running with credentials
	PhaseFailed   Phase = "Failed"    // join intent refused; waiting for new intent
	PhaseLeaving  Phase = "Leaving"   // draining and deleting the Node before leaving
	PhaseLeft     Phase = "Left"      // left the cluster; credentials wiped
)

// Status is what `evelet status` shows; the agent rewrites it on change.
type Status struct {
	Phase            Phase      `json:"phase"`
	Source           string     `json:"source,omitempty"`
	APIServer        string     `json:"apiServer,omitempty"`
	NodeName         string     `json:"nodeName,omitempty"`
	DeviceUUID       string     `json:"deviceUUID,omitempty"`
	Credentials      string     `json:"credentials,omitempty"` // reused | bootstrapped
	ClientCertExpiry *time.Time `json:"clientCertExpiry,omitempty"`
	KubeletPID       int        `json:"kubeletPID,omitempty"`
	KubeletRestarts  int        `json:"kubeletRestarts,omitempty"`
	LastError        string     `json:"lastError,omitempty"`
	// ConfigErrors are the owner's evelet.* config items that were refused
	// (each keeps its default).
	ConfigErrors  []string   `json:"configErrors,omitempty"`
	LastErrorTime *time.Time `json:"lastErrorTime,omitempty"`
	// Updated is when the content last changed.
	Updated time.Time `json:"updated"`
	// Heartbeat is when the agent last wrote the file; it does so at least
	// every 10 s while it runs, changed or not.
	Heartbeat time.Time `json:"heartbeat"`
	// APICache is the local API cache in front of the apiserver
	// (agent/apicache.go); absent while the kubelet does not run.
	APICache *APICacheStatus `json:"apiCache,omitempty"`
	// AgentPID is the agent's process id.
	AgentPID int `json:"agentPID,omitempty"`
}

// StaleAfter is how old a heartbeat may get before the status counts as
// stale: three missed heartbeats.
const StaleAfter = 3 * heartbeatEvery

// Liveness says whether the agent that wrote s still runs: alive is false
// with a reason when its process is gone or its heartbeat is older than
// StaleAfter. A status without a heartbeat (an older agent) is not judged.
func (s *Status) Liveness(now time.Time) (alive bool, why string) {
	if s.Heartbeat.IsZero() {
		return true, ""
	}
	at := s.Heartbeat.Local().Format(time.RFC3339)
	if s.AgentPID > 0 {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", s.AgentPID)); errors.Is(err, os.ErrNotExist) {
			return false, fmt.Sprintf("agent not running (pid %d is gone); status is stale since %s", s.AgentPID, at)
		}
	}
	if age := now.Sub(s.Heartbeat); age > StaleAfter {
		return false, fmt.Sprintf("agent not running or stuck: status is stale since %s (%s without a heartbeat)", at, age.Round(time.Second))
	}
	return true, ""
}

// StatusPath is where the agent publishes its status under runDir.
func StatusPath(runDir string) string { return layout.Run{Dir: runDir}.Status() }

func writeStatus(runDir string, s Status) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(StatusPath(runDir), append(b, '\n'), 0o644)
}

// ReadStatus reads the status the agent last published.
func ReadStatus(runDir string) (*Status, error) {
	b, err := os.ReadFile(StatusPath(runDir))
	if err != nil {
		return nil, err
	}
	var s Status
	return &s, json.Unmarshal(b, &s)
}
