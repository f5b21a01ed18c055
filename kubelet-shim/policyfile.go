package kubeletshim

import (
	"encoding/json"
	"os"
	"path/filepath"

	"github.com/lf-edge/evelet/internal/atomicfile"
	"github.com/lf-edge/evelet/policy"
)

// PolicyFileFlag names the guardrail policy file on `evelet kubelet`'s
// command line; it is evelet's, not the kubelet's, and is taken out before
// the kubelet's own flags are parsed (kubeletcmd.Run).
const PolicyFileFlag = "--evelet-policy-file"

// WritePolicyFile stores the guardrail policy for the kubelet's hostPath
// guard (kubeletcmd.VolumeGuard), temp-then-rename: the guard never reads
// half a file. It lives here, not beside the guard, so the agent that
// writes it links nothing of the kubelet.
func WritePolicyFile(path string, p policy.Policy) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(path, b, 0o600)
}
