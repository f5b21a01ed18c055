package vm

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

func TestCPUVirtFlags(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the flag check applies to x86 only")
	}
	dir := t.TempDir()
	for _, c := range []struct {
		name, cpuinfo string
		want          bool
	}{
		{"vmx", "processor\t: 0\nflags\t\t: fpu vme vmx sse\n", true},
		{"svm", "processor\t: 0\nflags\t\t: fpu svm\n", true},
		// What the 2-core test VMs show: a hypervisor, no VMX/SVM.
		{"none", "processor\t: 0\nflags\t\t: fpu vme hypervisor\n", false},
		{"no flags line", "processor\t: 0\n", false},
	} {
		p := filepath.Join(dir, c.name)
		if err := os.WriteFile(p, []byte(c.cpuinfo), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := cpuVirtFlags(p); got != c.want {
			t.Errorf("%s: cpuVirtFlags = %v, want %v", c.name, got, c.want)
		}
	}
	if cpuVirtFlags(filepath.Join(dir, "missing")) {
		t.Error("an unreadable cpuinfo must not count as KVM-capable")
	}
}
