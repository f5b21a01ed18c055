package doctor

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/lf-edge/evelet/cri/containerd"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Containerd dials the containerd CRI endpoint pods run on, as the CRI
// shim does, and asks for its runtime conditions.
func Containerd(ctx context.Context, cfg Config) Result {
	cfg.defaults()
	r := Result{Check: "containerd"}
	fix := fmt.Sprintf("start EVE's user containerd with its CRI plugin enabled, or point the agent's --containerd at its socket (now %s)", cfg.ContainerdEndpoint)
	// A missing socket is the common case (containerd not started, wrong
	// path): say so at once rather than after the dial's timeout.
	if path, found := strings.CutPrefix(cfg.ContainerdEndpoint, "unix://"); found || strings.HasPrefix(path, "/") {
		if _, err := os.Stat(path); err != nil {
			return fail(r, fmt.Sprintf("no containerd socket: %v", err), fix)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	b, err := containerd.Dial(ctx, cfg.ContainerdEndpoint)
	if err != nil {
		return fail(r, err.Error(), fix)
	}
	defer b.Close()
	v, err := b.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return fail(r, err.Error(), fix)
	}
	found := fmt.Sprintf("%s %s (CRI %s) at %s", v.GetRuntimeName(), v.GetRuntimeVersion(), v.GetRuntimeApiVersion(), cfg.ContainerdEndpoint)
	st, err := b.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		return fail(r, found+"; Status: "+err.Error(), fix)
	}
	var notReady []string
	for _, c := range st.GetStatus().GetConditions() {
		if !c.GetStatus() {
			notReady = append(notReady, fmt.Sprintf("%s=false (%s: %s)", c.GetType(), c.GetReason(), c.GetMessage()))
		}
	}
	if len(notReady) > 0 {
		// NetworkReady is false until a CNI config is in containerd's conf
		// dir: evelet-cni writes its own only after the device joined.
		return warn(r, found+"; "+strings.Join(notReady, "; "),
			"give containerd a CNI configuration (its conf_dir; with --cni-conf-dir the agent writes evelet-cni's after joining) and check its log")
	}
	return ok(r, found)
}
