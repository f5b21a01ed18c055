package containerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/policy"
)

// RuntimeDirs asks containerd which directories it writes and follows as
// root, from its own CRI Status (verbose), so that the guardrails protect
// the ones this containerd really uses, wherever its configuration put
// them, not only the stock locations (policy/protected.go). Stock paths
// still apply when containerd does not say.
func RuntimeDirs(ctx context.Context, rs runtimeapi.RuntimeServiceClient) ([]policy.NamedDir, error) {
	st, err := rs.Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		return nil, fmt.Errorf("containerd Status: %w", err)
	}
	cfg, ok := st.GetInfo()["config"]
	if !ok {
		return nil, errors.New("containerd Status: no \"config\" in its verbose info")
	}
	return runtimeDirsFromConfig([]byte(cfg))
}

// criConfig is the part of containerd's CRI plugin configuration, as its
// Status reports it under info["config"] (containerd 1.6/1.7), that names
// directories.
type criConfig struct {
	ContainerdRootDir string `json:"containerdRootDir"`
	RootDir           string `json:"rootDir"`
	StateDir          string `json:"stateDir"`
	CNI               struct {
		BinDir  string `json:"binDir"`
		ConfDir string `json:"confDir"`
	} `json:"cni"`
	Containerd struct {
		Runtimes map[string]struct {
			Options map[string]any `json:"options"`
		} `json:"runtimes"`
	} `json:"containerd"`
}

func runtimeDirsFromConfig(b []byte) ([]policy.NamedDir, error) {
	var c criConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("containerd Status: its config does not parse: %w", err)
	}
	var out []policy.NamedDir
	add := func(p, what string) {
		if filepath.IsAbs(p) {
			out = append(out, policy.NamedDir{Path: filepath.Clean(p), What: what + " (as containerd reports it)"})
		}
	}
	add(c.ContainerdRootDir, "containerd's root directory")
	add(c.RootDir, "containerd's CRI root directory")
	add(c.StateDir, "containerd's CRI state directory")
	// The CRI plugin's state directory sits in containerd's own state
	// directory (--state), which also holds the task bundles and the shims'
	// sockets.
	if filepath.IsAbs(c.StateDir) {
		add(filepath.Dir(c.StateDir), "containerd's state directory")
	}
	add(c.CNI.BinDir, "containerd's CNI plugin directory")
	add(c.CNI.ConfDir, "containerd's CNI configuration directory")
	names := make([]string, 0, len(c.Containerd.Runtimes))
	for n := range c.Containerd.Runtimes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		// runc's --root: container state runc reads back as root.
		if root, _ := c.Containerd.Runtimes[n].Options["Root"].(string); root != "" {
			add(root, "the OCI runtime's root directory (runtime "+n+")")
		}
	}
	if len(out) == 0 {
		return nil, errors.New("containerd Status: its config names no directory")
	}
	return out, nil
}
