package vmguest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFetchKernelRedoesAnIncompleteUnpack: a cache directory without its
// completion marker (a build killed mid-unpack) is not trusted: the
// package is fetched and unpacked again.
func TestFetchKernelRedoesAnIncompleteUnpack(t *testing.T) {
	ctx := context.Background()
	pkg, err := kernelPackage(ctx)
	if err != nil {
		t.Skipf("apt cannot name the kernel package here (run apt-get update): %v", err)
	}
	cache := t.TempDir()
	broken := filepath.Join(cache, "kernel", pkg, "root", "boot")
	if err := os.MkdirAll(broken, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(broken, "half-written"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	k, err := fetchKernel(ctx, cache)
	if err != nil {
		t.Fatal(err)
	}
	if k.pkg != pkg || !strings.Contains(pkg, k.version) {
		t.Errorf("fetched %s (%s), want %s", k.pkg, k.version, pkg)
	}
	if _, err := os.Stat(filepath.Join(broken, "half-written")); !os.IsNotExist(err) {
		t.Errorf("the incomplete unpack is still there: %v", err)
	}
	if _, err := os.Stat(k.vmlinuz()); err != nil {
		t.Error(err)
	}
	left, _ := filepath.Glob(filepath.Join(cache, "kernel", ".*"))
	if len(left) != 0 {
		t.Errorf("temporary directories left behind: %v", left)
	}
}

// TestFetchKernelWithoutApt: when apt cannot name the package (no package
// lists), a cached kernel is used, and without one the error says why.
func TestFetchKernelWithoutApt(t *testing.T) {
	imgs := buildImages(t) // fills the shared cache
	fake := t.TempDir()
	if err := os.WriteFile(filepath.Join(fake, "apt-cache"), []byte("#!/bin/sh\necho 'E: no package lists' >&2\nexit 100\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", fake+string(os.PathListSeparator)+os.Getenv("PATH"))
	ctx := context.Background()
	k, err := fetchKernel(ctx, filepath.Join(filepath.Dir(imgs.Disk), "cache"))
	if err != nil {
		t.Fatalf("with a cached kernel: %v", err)
	}
	if k.version != imgs.KernelVersion {
		t.Errorf("cached kernel %s, built with %s", k.version, imgs.KernelVersion)
	}
	_, err = fetchKernel(ctx, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "no package lists") || !strings.Contains(err.Error(), "no kernel cached") {
		t.Errorf("without a cached kernel: err = %v", err)
	}
}
