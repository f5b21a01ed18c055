// Package vmguesttest gives tests the test VM guest (images/vmguest), built
// once per test binary into the module's _output/vmguest, where the kernel
// cache survives between runs.
package vmguesttest

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lf-edge/evelet/images/vmguest"
)

var (
	once sync.Once
	imgs *vmguest.Images
	err  error
)

// Images builds (or finds up to date) the guest images; a build failure
// fails the test.
func Images(t testing.TB) *vmguest.Images {
	t.Helper()
	once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		mod, e := exec.Command("go", "env", "GOMOD").Output()
		if e != nil {
			err = e
			return
		}
		out := filepath.Join(filepath.Dir(strings.TrimSpace(string(mod))), "_output", "vmguest")
		imgs, err = vmguest.Build(ctx, filepath.Join(out, "cache"), out)
	})
	if err != nil {
		t.Fatalf("vmguest.Build: %v", err)
	}
	return imgs
}
