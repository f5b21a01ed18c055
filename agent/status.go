package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
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
	LastErrorTime    *time.Time `json:"lastErrorTime,omitempty"`
	Updated          time.Time  `json:"updated"`
}

// StatusPath is where the agent publishes its status under runDir.
func StatusPath(runDir string) string { return filepath.Join(runDir, "status.json") }

func writeStatus(runDir string, s Status) error {
	s.Updated = time.Now().UTC()
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
