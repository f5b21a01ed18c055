package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestAgentLinksNoKubelet: the evelet binary (agent, CRI shim, every VM's
// supervisor) links none of the vendored processes that evelet-node runs,
// so it does not load or initialise them (docs/benchmarks.md, footprint).
func TestAgentLinksNoKubelet(t *testing.T) {
	out, err := exec.Command("go", "list", "-tags", "providerless", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	forbidden := []string{
		"k8s.io/kubernetes/cmd/kubelet/", "k8s.io/kubernetes/pkg/kubelet",
		"k8s.io/kubernetes/cmd/kube-proxy/", "k8s.io/kubernetes/pkg/proxy",
		"k8s.io/kubernetes/pkg/volume", "github.com/coredns/",
		"github.com/lf-edge/evelet/kubelet-shim/kubeletcmd", "github.com/lf-edge/evelet/nodedns/server",
	}
	var bad []string
	for _, p := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if strings.HasPrefix(p, f) {
				bad = append(bad, p)
				break
			}
		}
	}
	if len(bad) > 0 {
		t.Errorf("cmd/evelet links %d packages that belong in evelet-node, e.g. %v", len(bad), bad[:min(len(bad), 5)])
	}
}

// TestVMMBinarySmall: evelet-vmm, one process per running VM, links neither
// the agent nor client-go (its RSS was 88 MB as `evelet vmm` of the one
// multi-call binary, 9 MB on its own).
func TestVMMBinarySmall(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "../evelet-vmm").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "k8s.io/client-go") || strings.HasPrefix(p, "github.com/lf-edge/evelet/agent") || strings.HasPrefix(p, "k8s.io/kubernetes") {
			t.Errorf("cmd/evelet-vmm links %s", p)
		}
	}
}
