package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fakeFS is a host with symbolic links and a mount table, and nothing else.
type fakeFS struct {
	links    map[string]string
	table    []mountEntry
	mountErr error
}

func (f *fakeFS) Resolve(p string) (string, error) {
	p = filepath.Clean(p)
	for range 40 {
		changed := false
		for l, target := range f.links {
			if within(p, l) {
				p, changed = filepath.Join(target, rel(p, l)), true
				break
			}
		}
		if !changed {
			return p, nil
		}
	}
	return "", errors.New("too many levels of symbolic links")
}

func (f *fakeFS) Mounts() ([]mountEntry, error) { return f.table, f.mountErr }

const (
	kroot = "/persist/evelet/kubelet/root"
	pod1  = kroot + "/pods/u1"
)

// device is a kubelet on EVE: /persist and /config are their own
// filesystems; pod u1 has a service account token (tmpfs), an emptyDir, a
// local PV of /data, a CSI volume and three subPath mounts.
func device() *fakeFS {
	return &fakeFS{
		links: map[string]string{"/data/link-to-config": "/config", "/var/lib/kubelet": kroot},
		table: []mountEntry{
			{"8:1", "/", "/"},
			{"8:2", "/", "/persist"},
			{"8:3", "/", "/config"},
			{"0:50", "/", pod1 + "/volumes/kubernetes.io~projected/kube-api-access"},
			{"8:1", "/data", pod1 + "/volumes/kubernetes.io~local-volume/pv1"},
			{"0:60", "/", kroot + "/plugins/kubernetes.io/csi/drv/h/globalmount"},
			{"0:60", "/", pod1 + "/volumes/kubernetes.io~csi/pv2/mount"},
			{"8:3", "/", pod1 + "/volume-subpaths/cfg/main/0"},
			{"8:2", "/evelet/kubelet/root/pods/u1/volumes/kubernetes.io~empty-dir/data/sub", pod1 + "/volume-subpaths/data/main/1"},
			{"0:50", "/token", pod1 + "/volume-subpaths/kube-api-access/main/2"},
			{"8:2", "/evelet/kubelet/root/pods/u2/volumes/kubernetes.io~secret/s", pod1 + "/volume-subpaths/stolen/main/3"},
		},
	}
}

func mounts(paths ...string) *runtimeapi.ContainerConfig {
	c := ctr("main", kubeletSC())
	for i, p := range paths {
		c.Mounts = append(c.Mounts, &runtimeapi.Mount{HostPath: p, ContainerPath: "/m" + string(rune('a'+i))})
	}
	return c
}

func TestHostPaths(t *testing.T) {
	sb := pod("default", "p", "u1", nil)
	base := Policy{KubeletRootDir: kroot, PodLogsDir: "/persist/evelet/logs/pods"}
	withPaths := func(ps ...string) Policy { p := base; p.AllowedHostPaths = ps; return p }
	cases := []struct {
		name  string
		paths []string
		p     Policy
		want  string // "" or a piece of the refusal
	}{
		{"kubelet mounts", []string{pod1 + "/etc-hosts", pod1 + "/containers/main/abc", pod1 + "/volumes/kubernetes.io~empty-dir/data",
			pod1 + "/volumes/kubernetes.io~projected/kube-api-access"}, base, ""},
		{"own log dir", []string{"/persist/evelet/logs/pods/default_p_u1/main"}, base, ""},
		{"kubelet root through a link", []string{"/var/lib/kubelet/pods/u1/etc-hosts"}, base, ""},
		{"secret subPath", []string{pod1 + "/volume-subpaths/kube-api-access/main/2"}, base, ""},
		{"emptyDir subPath", []string{pod1 + "/volume-subpaths/data/main/1"}, base, ""},
		{"csi volume", []string{pod1 + "/volumes/kubernetes.io~csi/pv2/mount"}, base, ""},
		{"image volume", []string{""}, base, ""},

		{"root", []string{"/"}, base, `mounts host path "/"; the device owner can allow it by adding "/" to config item evelet.policy.allowed-host-paths`},
		{"config", []string{"/config"}, base, `mounts host path "/config";`},
		{"config below", []string{"/config/../config/x"}, base, "not a clean absolute path"},
		{"relative", []string{"config"}, base, "not a clean absolute path"},
		{"dev", []string{"/dev/mem"}, base, `"/dev/mem"`},
		{"runtime socket", []string{"/run/containerd-user/containerd.sock"}, base, `"/run/containerd-user/containerd.sock"`},
		{"persist", []string{"/persist/evelet/credentials"}, base, `"/persist/evelet/credentials"`},
		{"kubelet sockets", []string{kroot + "/pod-resources/kubelet.sock"}, base, "pod-resources"},
		{"other pod", []string{kroot + "/pods/u2/volumes/kubernetes.io~secret/s"}, base, "/pods/u2/"},
		{"other pod's logs", []string{"/persist/evelet/logs/pods/default_q_u2"}, base, "default_q_u2"},
		{"prefix by elements", []string{"/database"}, withPaths("/data"), `"/database"`},
		{"link out of an allowed dir", []string{"/data/link-to-config/x"}, withPaths("/data"), `(a link to "/config/x")`},
		{"hostPath subPath of /config", []string{pod1 + "/volume-subpaths/cfg/main/0"}, base, `a bind mount of "/config"; the device owner can allow it by adding "/config"`},
		{"subPath of another pod's secret", []string{pod1 + "/volume-subpaths/stolen/main/3"}, base, "a bind mount of \"/persist/evelet/kubelet/root/pods/u2/"},
		{"local PV of /data", []string{pod1 + "/volumes/kubernetes.io~local-volume/pv1/x"}, base, `a bind mount of "/data/x"`},

		{"config allowed", []string{"/config", pod1 + "/volume-subpaths/cfg/main/0"}, withPaths("/config"), ""},
		{"local PV allowed", []string{pod1 + "/volumes/kubernetes.io~local-volume/pv1"}, withPaths("/data"), ""},
		{"everything allowed", []string{"/", "/dev/mem", pod1 + "/volume-subpaths/cfg/main/0"}, withPaths("/"), ""},
		{"no kubelet root", []string{pod1 + "/etc-hosts"}, Policy{}, "etc-hosts"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &checker{p: tc.p, fs: device()}
			v := c.container(sb, mounts(tc.paths...))
			switch {
			case tc.want == "" && v != nil:
				t.Errorf("refused: %v", v)
			case tc.want != "" && v == nil:
				t.Errorf("admitted, want a refusal with %s", tc.want)
			case v != nil && (v.Rule != RuleHostPath || !strings.Contains(v.Error(), tc.want)):
				t.Errorf("%v\nlacks %s", v, tc.want)
			}
		})
	}
}

func TestHostPathsPodIdentity(t *testing.T) {
	c := &checker{p: Policy{KubeletRootDir: kroot, PodLogsDir: "/logs"}, fs: device()}
	for _, sb := range []*runtimeapi.PodSandboxConfig{nil, pod("default", "p", "", nil), pod("default", "p", "..", nil), pod("default", "p", "u1/../u2", nil)} {
		if v := c.container(sb, mounts(kroot+"/pods/x")); v == nil {
			t.Errorf("pod %v may mount the kubelet's pods directory", sb.GetMetadata())
		}
	}
	if v := c.container(pod("..", "p", "u1", nil), mounts("/logs/.._p_u1")); v == nil {
		t.Error("odd namespace got a log directory")
	}
}

func TestHostPathsMountTableError(t *testing.T) {
	f := device()
	f.mountErr = errors.New("no /proc")
	c := &checker{p: Policy{KubeletRootDir: kroot, AllowedHostPaths: []string{"/data"}}, fs: f}
	sb := pod("default", "p", "u1", nil)
	if v := c.container(sb, mounts("/data/x")); v != nil {
		t.Errorf("a path outside the kubelet's pods needs no mount table: %v", v)
	}
	if v := c.container(sb, mounts(pod1+"/etc-hosts")); v == nil || !strings.Contains(v.Error(), "no /proc") {
		t.Errorf("fails open without a mount table: %v", v)
	}
}

func TestRealResolve(t *testing.T) {
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "real"), 0o755)
	os.Symlink(filepath.Join(dir, "real"), filepath.Join(dir, "link"))
	os.Symlink("/nonexistent-evelet-target", filepath.Join(dir, "dangling"))
	fs := realFS{}
	cases := map[string]string{
		dir + "/link":         dir + "/real",
		dir + "/link/new/dir": dir + "/real/new/dir",
		dir + "/missing/a/b":  dir + "/missing/a/b",
		dir + "/real/./x//y/": dir + "/real/x/y",
		"/":                   "/",
	}
	for in, want := range cases {
		if got, err := fs.Resolve(in); err != nil || got != want {
			t.Errorf("Resolve(%s) = %q, %v; want %q", in, got, err, want)
		}
	}
	if got, err := fs.Resolve(dir + "/dangling/x"); err == nil {
		t.Errorf("a dangling link resolved to %q", got)
	}
}

func TestParseMountInfo(t *testing.T) {
	in := `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
35 22 0:50 /a\040b /persist/with\040space rw - tmpfs tmpfs rw
36 22 0:51 / /x\134y rw - tmpfs tmpfs rw
`
	got, err := parseMountInfo([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []mountEntry{{"8:1", "/", "/"}, {"0:50", "/a b", "/persist/with space"}, {"0:51", "/", `/x\y`}}
	if len(got) != len(want) {
		t.Fatalf("%v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if _, err := parseMountInfo(nil); err == nil {
		t.Error("empty table accepted")
	}
	real, err := realFS{}.Mounts()
	if err != nil || len(real) == 0 || real[0].point == "" {
		t.Errorf("own mount table: %v, %v", real, err)
	}
}
