package vm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDiskFormatRefusesHostPaths: a qcow2 naming a file of the host (a
// backing file, an external data file) is refused, whatever that file is;
// a plain qcow2 and a raw file pass.
func TestDiskFormatRefusesHostPaths(t *testing.T) {
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Skip("qemu-img not installed (hack/install-prereqs.sh installs it)")
	}
	dir := t.TempDir()
	victim := filepath.Join(dir, "device-key.raw")
	if err := os.WriteFile(victim, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	mk := func(name string, args ...string) string {
		p := filepath.Join(dir, name)
		out, err := exec.Command(qemuImg, append(append([]string{"create", "-q", "-f", "qcow2"}, args...), p, "1M")...).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-img create %s: %v %s", name, err, out)
		}
		return p
	}
	ctx := context.Background()
	for name, tc := range map[string]struct {
		path, want string
	}{
		"backing":   {mk("backing.qcow2", "-F", "raw", "-b", victim), "backing file"},
		"data-file": {mk("datafile.qcow2", "-o", "data_file="+victim), "external data file"},
	} {
		if _, err := diskFormat(ctx, qemuImg, tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about the %s", name, err, tc.want)
		}
	}
	if f, err := diskFormat(ctx, qemuImg, mk("plain.qcow2")); err != nil || f != "qcow2" {
		t.Errorf("plain qcow2: %q %v", f, err)
	}
	if f, err := diskFormat(ctx, qemuImg, victim); err != nil || f != "raw" {
		t.Errorf("raw: %q %v", f, err)
	}
}
