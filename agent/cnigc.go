package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/lf-edge/evelet/cri"
	"github.com/lf-edge/evelet/internal/layout"
)

// containerd 1.6 speaks CNI 1.0.0 and never sends GC, so what a pod
// network holds for a sandbox the runtime forgot (its state wiped, a DEL
// that never came) stays: an eve-ni address of a reserved range, a veth,
// evelet-cni's record. The agent sits in the CRI path and can send the GC
// itself, with every sandbox of every backend as valid, listed while no
// sandbox is being set up (cri.Server.WithSandboxes).

const (
	// cniGCFirst lets the kubelet start and tidy up after a reboot first.
	cniGCFirst = 2 * time.Minute
	// CNIGCInterval is the default of CNIOptions.GCInterval.
	CNIGCInterval = 30 * time.Minute
	// cniGCTimeout bounds one GC: new sandboxes wait while it runs.
	cniGCTimeout = 2 * time.Minute
	// podIfName is the interface the runtime asks the pod network for.
	podIfName = "eth0"
)

// runCNIGC sends a CNI GC every GCInterval while srv serves.
func (a *Agent) runCNIGC(ctx context.Context, srv *cri.Server) {
	every := a.cfg.CNI.GCInterval
	if !a.cfg.CNI.enabled() || every <= 0 {
		return
	}
	for wait := min(cniGCFirst, every); a.sleep(ctx, wait); wait = every {
		if err := a.collectCNI(ctx, srv); err != nil {
			a.log.WithError(err).Warn("CNI GC failed; retried at the next interval")
		}
	}
}

// collectCNI lists the sandboxes and sends the GC.
func (a *Agent) collectCNI(ctx context.Context, srv *cri.Server) error {
	conf := filepath.Join(a.cfg.CNI.ConfDir, CNIConflistName)
	cache := layout.State{Dir: a.cfg.StateDir}.CNI().GCCache()
	ctx, cancel := context.WithTimeout(ctx, cniGCTimeout)
	defer cancel()
	return srv.WithSandboxes(ctx, func(ids []string) error {
		if err := gcNetworks(ctx, conf, []string{a.cfg.CNI.BinDir}, cache, ids); err != nil {
			return err
		}
		a.log.WithField("sandboxes", len(ids)).Info("CNI GC done: attachments of other sandboxes released")
		return nil
	})
}

// gcNetworks sends CNI GC (spec 1.1) for the conflist with the sandboxes'
// pod interfaces as the valid attachments. The libcni cache is cacheDir
// (empty: the agent never ADDs), so libcni's own cache-driven DELs do not
// touch the runtime's cache; the plugins act from their own records.
func gcNetworks(ctx context.Context, conflist string, binDirs []string, cacheDir string, sandboxes []string) error {
	l, err := libcni.ConfListFromFile(conflist)
	if err != nil {
		return fmt.Errorf("cni gc: %w", err)
	}
	// The file says 1.0.0 for containerd 1.6's libcni; GC needs 1.1.0,
	// which evelet-cni speaks.
	l.CNIVersion = "1.1.0"
	if err := os.MkdirAll(cacheDir, 0o700); err != nil {
		return fmt.Errorf("cni gc: %w", err)
	}
	valid := make([]types.GCAttachment, 0, len(sandboxes))
	for _, id := range sandboxes {
		valid = append(valid, types.GCAttachment{ContainerID: id, IfName: podIfName})
	}
	cn := libcni.NewCNIConfigWithCacheDir(binDirs, cacheDir, nil)
	if err := cn.GCNetworkList(ctx, l, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
		return fmt.Errorf("cni gc: %w", err)
	}
	return nil
}
