package containerd

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// testdata/status-config-1.6.20.json is info["config"] exactly as a real
// containerd 1.6.20 (Debian 12's) answered Status{Verbose: true} from
// tests/containerd's harness: the known answer comes from containerd, not
// from evelet.
func TestRuntimeDirsFromContainerd1620(t *testing.T) {
	b, err := os.ReadFile("testdata/status-config-1.6.20.json")
	if err != nil {
		t.Fatal(err)
	}
	dirs, err := runtimeDirsFromConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, d := range dirs {
		got[d.Path] = d.What
	}
	const base = "/tmp/TestProbe1488854960/001/"
	want := map[string]string{
		base + "root":                            "containerd's root directory",
		base + "root/io.containerd.grpc.v1.cri":  "containerd's CRI root directory",
		base + "state/io.containerd.grpc.v1.cri": "containerd's CRI state directory",
		base + "state":                           "containerd's state directory",
		"/usr/lib/cni":                           "containerd's CNI plugin directory",
		base + "cni/net.d":                       "containerd's CNI configuration directory",
		base + "runc":                            "the OCI runtime's root directory (runtime runc)",
	}
	trimmed := map[string]string{}
	for p, w := range got {
		if !strings.HasSuffix(w, " (as containerd reports it)") {
			t.Errorf("%s: %q does not say containerd reported it", p, w)
		}
		trimmed[p] = strings.TrimSuffix(w, " (as containerd reports it)")
	}
	if !reflect.DeepEqual(trimmed, want) {
		t.Errorf("dirs\n got %v\nwant %v", trimmed, want)
	}
}

func TestRuntimeDirsBadConfig(t *testing.T) {
	for name, in := range map[string]string{
		"not JSON":     "{",
		"no directory": `{"containerdRootDir": "", "cni": {"binDir": "relative/bin"}}`,
		"wrong type":   `{"containerdRootDir": 7}`,
	} {
		if _, err := runtimeDirsFromConfig([]byte(in)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
