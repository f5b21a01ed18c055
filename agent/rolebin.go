package agent

import (
	"os/exec"

	"github.com/lf-edge/evelet/internal/nodebin"
)

// roleCommand is the command line of one of the node's processes that are
// vendored Kubernetes code (the kubelet, kube-proxy, the node-local DNS):
// `evelet-<role> <role> args...`, from the binary beside the agent's own.
// The agent's binary does not link them, so it stays small, and each of
// them loads only its own code (docs/architecture.md).
func (a *Agent) roleCommand(role string, args ...string) *exec.Cmd {
	return exec.Command(nodebin.Path(a.cfg.Self, role), append([]string{role}, args...)...)
}
