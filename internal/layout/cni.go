package layout

import "path/filepath"

// CNI is the state of evelet's pod networking (evelet-cni, eve-ni).
func (s State) CNI() CNI { return CNI{Dir: filepath.Join(s.Dir, "cni")} }

// CNI names the files under the CNI state directory (0700).
type CNI struct{ Dir string }

// NetworkKubeconfig is the evelet-network ServiceAccount's kubeconfig
// (0600), written by the agent from the join material's networkToken.
func (c CNI) NetworkKubeconfig() string { return filepath.Join(c.Dir, "evelet-network.kubeconfig") }

// MetaState is evelet-cni's attachment and result cache: DEL must find it
// after a reboot, so it lives under the state root.
func (c CNI) MetaState() string { return filepath.Join(c.Dir, "evelet-cni") }

// GCCache is the libcni cache of the agent's own CNI GC calls: kept apart
// from the runtime's, so a GC acts only through the plugins' own records.
func (c CNI) GCCache() string { return filepath.Join(c.Dir, "gc-cache") }
