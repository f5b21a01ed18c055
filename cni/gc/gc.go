// Package gc sends the pod network a CNI GC (spec 1.1) on behalf of the
// runtime. containerd 1.6 speaks CNI 1.0.0 and never sends GC, so what a
// pod network holds for a sandbox the runtime forgot (its state wiped, a
// DEL that never came) stays: an eve-ni address of a reserved range, a
// veth, evelet-cni's record. The agent sits in the CRI path and runs Loop
// with every sandbox of every backend as valid, listed while no sandbox is
// being set up (cri.Server.WithSandboxes).
package gc

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/sirupsen/logrus"
)

const (
	// First lets the kubelet start and tidy up after a reboot first.
	First = 2 * time.Minute
	// DefaultInterval is how often Loop collects unless told otherwise.
	DefaultInterval = 30 * time.Minute
	// timeout bounds one GC: new sandboxes wait while it runs.
	timeout = 2 * time.Minute
	// PodIfName is the interface the runtime asks the pod network for.
	PodIfName = "eth0"
)

// Sandboxes lists every sandbox the runtime knows and runs f while no
// sandbox is being set up (*cri.Server).
type Sandboxes interface {
	WithSandboxes(ctx context.Context, f func(ids []string) error) error
}

// Loop collects every Interval while ctx lasts.
type Loop struct {
	// ConfList is the pod network's conflist; BinDirs hold its plugins.
	ConfList string
	BinDirs  []string
	// CacheDir is libcni's cache for the GC (never the runtime's).
	CacheDir string
	Interval time.Duration
	Log      *logrus.Entry
	// Sleep waits d or until ctx ends (false then); backoff.Sleep.
	Sleep func(ctx context.Context, d time.Duration) bool
}

// Run sends a CNI GC every Interval (the first after at most First) while
// sb serves; a failed GC is retried at the next interval.
func (l *Loop) Run(ctx context.Context, sb Sandboxes) {
	if l.Interval <= 0 {
		return
	}
	for wait := min(First, l.Interval); l.Sleep(ctx, wait); wait = l.Interval {
		if err := l.Collect(ctx, sb); err != nil {
			l.Log.WithError(err).Warn("CNI GC failed; retried at the next interval")
		}
	}
}

// Collect lists the sandboxes and sends one GC.
func (l *Loop) Collect(ctx context.Context, sb Sandboxes) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return sb.WithSandboxes(ctx, func(ids []string) error {
		if err := Networks(ctx, l.ConfList, l.BinDirs, l.CacheDir, ids); err != nil {
			return err
		}
		l.Log.WithField("sandboxes", len(ids)).Info("CNI GC done: attachments of other sandboxes released")
		return nil
	})
}

// Networks sends CNI GC for the conflist with the sandboxes' pod
// interfaces as the valid attachments. The libcni cache is cacheDir (empty:
// the agent never ADDs), so libcni's own cache-driven DELs do not touch the
// runtime's cache; the plugins act from their own records.
func Networks(ctx context.Context, conflist string, binDirs []string, cacheDir string, sandboxes []string) error {
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
		valid = append(valid, types.GCAttachment{ContainerID: id, IfName: PodIfName})
	}
	cn := libcni.NewCNIConfigWithCacheDir(binDirs, cacheDir, nil)
	if err := cn.GCNetworkList(ctx, l, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
		return fmt.Errorf("cni gc: %w", err)
	}
	return nil
}
