package nodebin

import (
	"os"
	"slices"
	"testing"
)

func TestPath(t *testing.T) {
	if got := Path("/usr/bin/evelet", "kube-proxy"); got != "/usr/bin/evelet-kube-proxy" {
		t.Errorf("Path = %q", got)
	}
}

// TestArgs: the role word the agent puts first is dropped, and a role
// binary run by hand without it gets its arguments unchanged.
func TestArgs(t *testing.T) {
	saved := os.Args
	t.Cleanup(func() { os.Args = saved })
	for _, c := range []struct{ argv, want []string }{
		{[]string{"evelet-dns", "dns", "/run/Corefile"}, []string{"/run/Corefile"}},
		{[]string{"evelet-dns", "/run/Corefile"}, []string{"/run/Corefile"}},
		{[]string{"evelet-kubelet", "kubelet", "kubelet"}, []string{"kubelet"}},
		{[]string{"evelet-kubelet"}, []string{}},
	} {
		os.Args = c.argv
		if got := Args(c.argv[0][len("evelet-"):]); !slices.Equal(got, c.want) {
			t.Errorf("Args for %q = %q, want %q", c.argv, got, c.want)
		}
	}
}
