package agent

import (
	"context"
	"reflect"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri/containerd"
	"github.com/lf-edge/evelet/policy"
)

// runtimeDirsTimeout bounds the question to containerd at CRI (re)start;
// it has just answered Version, so it answers Status at once.
const runtimeDirsTimeout = 10 * time.Second

// learnRuntimeDirs asks the runtime which directories it writes and
// follows (cri/containerd.RuntimeDirs) and protects them from the next
// policy on. Called before the CRI server serves, so no pod is judged
// without them. When containerd does not say, the ones it said before (and
// the stock paths) stay protected.
func (a *Agent) learnRuntimeDirs(ctx context.Context, rs runtimeapi.RuntimeServiceClient) {
	ctx, cancel := context.WithTimeout(ctx, runtimeDirsTimeout)
	defer cancel()
	dirs, err := containerd.RuntimeDirs(ctx, rs)
	if err != nil {
		a.log.WithError(err).Warn("containerd did not name its directories; only the configured and stock ones are protected")
		return
	}
	a.mu.Lock()
	changed := !reflect.DeepEqual(dirs, a.runtimeDirs)
	a.runtimeDirs = dirs
	a.mu.Unlock()
	if changed {
		a.log.WithField("dirs", dirs).Info("runtime directories protected")
		a.writePolicyFile()
	}
}

func (a *Agent) protectedRuntimeDirs() []policy.NamedDir {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]policy.NamedDir(nil), a.runtimeDirs...)
}
