package doctor

import (
	"fmt"
	"os"
	"strings"

	"github.com/lf-edge/evelet/internal/nodebin"
)

// RoleBinaries says whether the binaries the agent runs beside itself
// (internal/nodebin) are there and executable: without one, the process it
// stands for (the kubelet, kube-proxy, the node DNS, a VM's supervisor)
// cannot start and the agent only logs its restarts.
func RoleBinaries(cfg Config) Result {
	r := Result{Check: "role-binaries"}
	if cfg.Self == "" {
		return warn(r, "the agent's executable is unknown", "run doctor as `evelet doctor` from the installed evelet")
	}
	need := []string{"kubelet"}
	if cfg.NodeDNS {
		need = append(need, "dns")
	}
	if cfg.KubeProxy {
		need = append(need, "kube-proxy")
	}
	if cfg.VMPods {
		need = append(need, "vmm")
	}
	var found, bad []string
	for _, role := range need {
		p := nodebin.Path(cfg.Self, role)
		st, err := os.Stat(p)
		switch {
		case err != nil:
			bad = append(bad, fmt.Sprintf("%s: %v", p, err))
		case !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0:
			bad = append(bad, fmt.Sprintf("%s: not an executable file (%v)", p, st.Mode()))
		default:
			found = append(found, nodebin.Name(role))
		}
	}
	if len(bad) > 0 {
		return fail(r, strings.Join(bad, "; "),
			"install the role binaries of the same build beside "+cfg.Self+" (make build puts evelet-kubelet, evelet-kube-proxy, evelet-dns and evelet-vmm in bin/)")
	}
	return ok(r, strings.Join(found, ", ")+" beside "+cfg.Self)
}
