package kubeproxy

import (
	"os"
	"path/filepath"
	"testing"
)

// TestBinDirHoldsOnlyNft: kube-proxy's PATH holds nft and nothing else, so
// its start-up "cleanup" of the other modes finds no modprobe (which would
// load ip_vs into EVE's kernel and flush IPVS) and no iptables.
func TestBinDirHoldsOnlyNft(t *testing.T) {
	tools := t.TempDir()
	for _, name := range []string{"nft", "modprobe", "iptables", "iptables-restore"} {
		if err := os.WriteFile(filepath.Join(tools, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", tools)
	dir := filepath.Join(t.TempDir(), "bin")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// Left by an older evelet: goes.
	if err := os.Symlink(filepath.Join(tools, "modprobe"), filepath.Join(dir, "modprobe")); err != nil {
		t.Fatal(err)
	}
	path, err := PrepareBinDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if path != dir {
		t.Errorf("PATH %q, want %q only", path, dir)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "nft" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("kube-proxy's bin dir holds %v, want [nft]", names)
	}
	if target, err := os.Readlink(filepath.Join(dir, "nft")); err != nil || target != filepath.Join(tools, "nft") {
		t.Errorf("nft -> %q (%v), want %q", target, err, filepath.Join(tools, "nft"))
	}
	// Idempotent: a second start finds the link in place.
	if _, err := PrepareBinDir(dir); err != nil {
		t.Fatal(err)
	}
}

func TestBinDirWithoutNftFails(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	if _, err := PrepareBinDir(filepath.Join(t.TempDir(), "bin")); err == nil {
		t.Fatal("PrepareBinDir without nft on PATH succeeded")
	}
}
