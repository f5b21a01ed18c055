package agent

import (
	"context"
	"path/filepath"

	"github.com/lf-edge/evelet/cni/gc"
	"github.com/lf-edge/evelet/internal/layout"
)

// CNIGCInterval is the default of CNIOptions.GCInterval.
const CNIGCInterval = gc.DefaultInterval

// cniGC is the pod network's GC loop (cni/gc) for this agent's CNI setup;
// nil when multi-network pods are off.
func (a *Agent) cniGC() *gc.Loop {
	if !a.cfg.CNI.enabled() {
		return nil
	}
	return &gc.Loop{
		ConfList: filepath.Join(a.cfg.CNI.ConfDir, CNIConflistName),
		BinDirs:  []string{a.cfg.CNI.BinDir},
		CacheDir: layout.State{Dir: a.cfg.StateDir}.CNI().GCCache(),
		Interval: a.cfg.CNI.GCInterval,
		Log:      a.log.WithField("component", "cni-gc"),
		Sleep:    a.sleep,
	}
}

// runCNIGC runs the GC loop while srv serves.
func (a *Agent) runCNIGC(ctx context.Context, srv gc.Sandboxes) {
	if l := a.cniGC(); l != nil {
		l.Run(ctx, srv)
	}
}
