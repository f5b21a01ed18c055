package kubeproxy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Tools are the programs kube-proxy may run in nftables mode: knftables
// runs `nft` for every change. Nothing else: on every start kube-proxy
// also "cleans up" the other modes, which runs `modprobe ip_vs` (loading a
// kernel module into EVE's kernel), then flushes every IPVS service of the
// namespace and rewrites iptables' nat table; without modprobe and
// iptables on its PATH those steps find nothing to do and skip.
var Tools = []string{"nft"}

// PrepareBinDir makes dir the only directory on kube-proxy's PATH: one
// symlink per tool, to the tool found on this process's PATH. It returns
// the PATH value for the child's environment.
func PrepareBinDir(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("kube-proxy tools: %w", err)
	}
	for _, t := range Tools {
		target, err := exec.LookPath(t)
		if err != nil {
			return "", fmt.Errorf("kube-proxy needs %q (nftables 1.0.1 or later) in the evelet image: %w", t, err)
		}
		if target, err = filepath.Abs(target); err != nil {
			return "", err
		}
		link := filepath.Join(dir, t)
		tmp := link + ".tmp"
		os.Remove(tmp)
		if err := os.Symlink(target, tmp); err != nil {
			return "", fmt.Errorf("kube-proxy tools: %w", err)
		}
		if err := os.Rename(tmp, link); err != nil {
			return "", fmt.Errorf("kube-proxy tools: %w", err)
		}
	}
	// Anything else in dir is not ours to run.
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("kube-proxy tools: %w", err)
	}
	for _, e := range ents {
		if !isTool(e.Name()) {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
	return dir, nil
}

func isTool(name string) bool {
	for _, t := range Tools {
		if t == name {
			return true
		}
	}
	return false
}
