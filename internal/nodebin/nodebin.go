// Package nodebin names the role binary, evelet-node, that runs the node's
// vendored Kubernetes processes (the kubelet, kube-proxy, the node-local
// DNS), and where the agent finds it: next to its own binary. The agent's
// binary does not link those processes' code, so it stays small
// (docs/architecture.md, docs/benchmarks.md).
package nodebin

import "path/filepath"

// Name is the role binary's file name.
const Name = "evelet-node"

// Roles are the commands evelet-node runs; `evelet <role>` hands them on.
var Roles = []string{"kubelet", "kube-proxy", "dns"}

// Path is the role binary beside self (the agent's os.Executable).
func Path(self string) string { return filepath.Join(filepath.Dir(self), Name) }
