package version

import (
	"runtime"
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	s := String()
	for _, want := range []string{"evelet " + Version + " ", "kubelet " + Kubelet(), runtime.Version(), runtime.GOOS + "/" + runtime.GOARCH} {
		if !strings.Contains(s, want) {
			t.Errorf("String() = %q, want it to contain %q", s, want)
		}
	}
}

func TestKubelet(t *testing.T) {
	if v := Kubelet(); !strings.HasPrefix(v, "v") {
		t.Errorf("Kubelet() = %q, want a version starting with v", v)
	}
}

func TestVersionOverridable(t *testing.T) {
	old := Version
	t.Cleanup(func() { Version = old })
	Version = "9.9.9"
	if s := String(); !strings.HasPrefix(s, "evelet 9.9.9 (") {
		t.Errorf("String() = %q after override", s)
	}
}
