// Package version reports which evelet and which vendored kubelet this binary is.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	k8sversion "k8s.io/component-base/version"
)

// Version is evelet's own version. Release builds stamp it with
// -ldflags "-X github.com/lf-edge/evelet/version.Version=...".
var Version = "0.1.0-dev"

// kubernetesModule is the module the kubelet is vendored from.
const kubernetesModule = "k8s.io/kubernetes"

// Kubelet returns the version of the vendored kubelet, as stamped into
// k8s.io/component-base/version at build time. A plain `go build` leaves the
// upstream placeholder there; then the pinned k8s.io/kubernetes module version
// from the build info is the next most truthful answer.
func Kubelet() string {
	v := k8sversion.Get().GitVersion
	if !strings.HasPrefix(v, "v0.0.0-master") {
		return v
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range bi.Deps {
			if dep.Path == kubernetesModule {
				return dep.Version
			}
		}
	}
	return v
}

// String is the one-line description printed by `evelet version` and logged at start-up,
// e.g. "evelet 0.1.0-dev (kubelet v1.35.4, go1.26.0 linux/amd64)".
func String() string {
	return fmt.Sprintf("evelet %s (kubelet %s, %s %s/%s)",
		Version, Kubelet(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
