package vmguest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// buildOnce builds the images once per test binary into _output/vmguest of
// the module (the kernel cache survives between runs there).
func buildImages(t *testing.T) *Images {
	t.Helper()
	imagesOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		root, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			imagesErr = err
			return
		}
		out := filepath.Join(filepath.Dir(strings.TrimSpace(string(root))), "_output", "vmguest")
		start := time.Now()
		builtImages, imagesErr = Build(ctx, filepath.Join(out, "cache"), out)
		t.Logf("vmguest.Build took %s", time.Since(start).Round(time.Millisecond))
	})
	if imagesErr != nil {
		t.Fatalf("Build: %v", imagesErr)
	}
	return builtImages
}

func TestBuildWritesBothForms(t *testing.T) {
	imgs := buildImages(t)
	for _, p := range []string{imgs.DiskTar, imgs.KernelTar, imgs.Disk, imgs.Kernel, imgs.Initrd, imgs.Cmdline} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d bytes", filepath.Base(p), st.Size())
	}
	t.Logf("kernel %s (%s)", imgs.KernelVersion, imgs.KernelPackage)
}
