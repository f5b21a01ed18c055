package policy

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"

	"golang.org/x/sys/unix"
	"os"
	"path/filepath"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fakeFS is a host with symbolic links, regular files (everything else is
// a directory) and a mount table, and nothing else.
type fakeFS struct {
	links    map[string]string
	files    map[string]bool
	table    []mountEntry
	mountErr error
	ports    map[int]bool
	portsErr error
}

func (f *fakeFS) ListeningPorts() (map[int]bool, error) { return f.ports, f.portsErr }

func (f *fakeFS) TypeBeneath(root, rel string) (fs.FileMode, error) {
	p := root
	for _, e := range strings.Split(rel, "/") {
		p = filepath.Join(p, e)
		if _, ok := f.links[p]; ok {
			return 0, fmt.Errorf("%s: %w", p, syscall.ELOOP)
		}
	}
	if f.files[p] {
		return 0, nil
	}
	return fs.ModeDir, nil
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
		links: map[string]string{
			"/data/link-to-config": "/config", "/var/lib/kubelet": kroot, "/data/link-to-pods": kroot + "/pods/u1",
			"/data/link-to-logs": "/persist/evelet/logs/pods",
			// What a container with write access to these would plant.
			pod1 + "/volumes/kubernetes.io~empty-dir/flip": "/persist/evelet/credentials",
			pod1 + "/containers/main/lnk":                  "/config/ecdh.key.pem",
		},
		files: map[string]bool{pod1 + "/etc-hosts": true, pod1 + "/containers/main/abc": true},
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
			// hostPath kroot/pods with subPathExpr $(UID): the pod's own directory.
			{"8:2", "/evelet/kubelet/root/pods/u1", pod1 + "/volume-subpaths/poddir/main/4"},
			// Pod u2's token tmpfs and Memory emptyDir, reached by pod u1
			// through a subPath of a hostPath kroot/pods, and through a local PV.
			{"0:70", "/", kroot + "/pods/u2/volumes/kubernetes.io~projected/kube-api-access"},
			{"0:71", "/", kroot + "/pods/u2/volumes/kubernetes.io~empty-dir/mem"},
			{"0:70", "/token", pod1 + "/volume-subpaths/token/main/5"},
			{"0:71", "/", pod1 + "/volume-subpaths/mem/main/6"},
			{"0:70", "/", pod1 + "/volumes/kubernetes.io~local-volume/pv3"},
			{"0:70", "/token", pod1 + "/volume-subpaths/pv3/main/7"},
			// Pod u1's own Memory emptyDir, and a subPath of it.
			{"0:72", "/", pod1 + "/volumes/kubernetes.io~empty-dir/mem"},
			{"0:72", "/a", pod1 + "/volume-subpaths/mem/main/8"},
			// Local PVs on the kubelet's pod-logs and pods directories, the
			// first with subPathExpr $(NS)_$(POD)_$(UID); a hostPath /data
			// with a subPath.
			{"8:2", "/evelet/logs/pods", pod1 + "/volumes/kubernetes.io~local-volume/logs"},
			{"8:2", "/evelet/logs/pods/default_p_u1", pod1 + "/volume-subpaths/logs/main/9"},
			{"8:2", "/evelet/kubelet/root/pods", pod1 + "/volumes/kubernetes.io~local-volume/pods"},
			{"8:1", "/data/sub", pod1 + "/volume-subpaths/dat/main/10"},
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
	withRoot := func(r string) Policy { p := base; p.KubeletRootDir = r; return p }
	withProtected := func(d string) Policy { p := withPaths("/"); p.ProtectedDirs = []string{d}; return p }
	withRuntime := func(d, what string) Policy { p := withPaths("/"); p.RuntimeDirs = []NamedDir{{d, what}}; return p }
	cases := []struct {
		name  string
		paths []string
		p     Policy
		want  string // "" or a piece of the refusal
	}{
		{"kubelet mounts", []string{pod1 + "/etc-hosts", pod1 + "/containers/main/abc", pod1 + "/volumes/kubernetes.io~empty-dir/data",
			pod1 + "/volumes/kubernetes.io~projected/kube-api-access", pod1 + "/volumes/kubernetes.io~empty-dir/mem"}, base, ""},
		{"kubelet root named through a link", []string{"/var/lib/kubelet/pods/u1/etc-hosts"}, withRoot("/var/lib/kubelet"), ""},
		{"secret subPath", []string{pod1 + "/volume-subpaths/kube-api-access/main/2"}, base, ""},
		{"emptyDir subPath", []string{pod1 + "/volume-subpaths/data/main/1"}, base, ""},
		{"Memory emptyDir subPath", []string{pod1 + "/volume-subpaths/mem/main/8"}, base, ""},
		{"csi volume", []string{pod1 + "/volumes/kubernetes.io~csi/pv2/mount"}, base, ""},
		{"image volume", []string{""}, base, ""},

		{"root", []string{"/"}, base, `mounts host path "/", a parent of the kubelet's pod-logs directory ("/persist/evelet/logs/pods"); no config item can allow this`},
		{"root, owner allowed /", []string{"/"}, withPaths("/"), `a parent of the kubelet's pod-logs directory`},
		{"persist, owner allowed it", []string{"/persist"}, withPaths("/persist"), `a parent of`},
		{"config", []string{"/config"}, base, `mounts host path "/config", inside EVE's device identity and keys ("/config"); no config item`},
		{"data", []string{"/data/x"}, base, `mounts host path "/data/x"; the device owner can allow it by adding "/data/x" to config item evelet.policy.allowed-host-paths`},
		{"own log dir", []string{"/persist/evelet/logs/pods/default_p_u1"}, base, `inside the kubelet's pod-logs directory ("/persist/evelet/logs/pods"); no config item`},
		{"own log dir, owner allowed /persist", []string{"/persist/evelet/logs/pods/default_p_u1/main"}, withPaths("/persist"), `inside the kubelet's pod-logs directory`},
		{"log dir through an allowed link", []string{"/data/link-to-logs/default_p_u1"}, withPaths("/data"), `(a link to "/persist/evelet/logs/pods/default_p_u1"), inside the kubelet's pod-logs directory`},
		{"agent's protected dir", []string{"/srv/ctrd/io.containerd.grpc.v1.cri"}, withProtected("/srv/ctrd"), `inside a directory the device's own components use ("/srv/ctrd"); no config item`},
		{"runtime's reported root", []string{"/srv/ctrd2/root/io.containerd.content.v1.content"}, withRuntime("/srv/ctrd2/root", "containerd's root directory (as containerd reports it)"),
			`inside containerd's root directory (as containerd reports it) ("/srv/ctrd2/root"); no config item`},
		{"parent of runtime's reported state", []string{"/srv/ctrd2"}, withRuntime("/srv/ctrd2/state", "containerd's state directory (as containerd reports it)"), `a parent of containerd's state directory`},
		{"parent of agent's protected dir", []string{"/srv"}, withProtected("/srv/ctrd"), `a parent of a directory the device's own components use`},
		{"stock containerd root", []string{"/var/lib/containerd/io.containerd.content.v1.content"}, withPaths("/var"), `inside containerd's root directory`},
		{"stock kubelet root", []string{"/var/lib/kubelet/pods"}, withPaths("/var/lib"), `no config item`},
		{"cni conf", []string{"/etc/cni/net.d"}, withPaths("/etc"), `inside the CNI configuration directory`},
		{"netns", []string{"/run/netns/cni-1"}, withPaths("/run"), `inside the network namespace directory`},
		{"config below", []string{"/config/../config/x"}, base, "not a clean absolute path"},
		{"relative", []string{"config"}, base, "not a clean absolute path"},
		{"dev", []string{"/dev/mem"}, base, `"/dev/mem"`},
		{"runtime socket", []string{"/run/containerd-user/containerd.sock"}, base, `"/run/containerd-user/containerd.sock"`},
		{"persist", []string{"/persist/evelet/credentials"}, base, `"/persist/evelet/credentials"`},
		{"kubelet sockets", []string{kroot + "/pod-resources/kubelet.sock"}, base, "not one of a pod's own volumes; no config item"},
		{"kubelet root itself", []string{kroot}, withPaths("/persist"), "not one of a pod's own volumes"},
		{"pods dir", []string{kroot + "/pods"}, base, "not one of a pod's own volumes"},
		{"other pod", []string{kroot + "/pods/u2/volumes/kubernetes.io~secret/s"}, base, "in another pod's directory"},
		{"other pod, owner allowed /persist", []string{kroot + "/pods/u2/etc-hosts"}, withPaths("/persist"), "in another pod's directory"},
		{"own pod dir", []string{pod1}, base, "not one of a pod's own volumes"},
		{"own volumes dir", []string{pod1 + "/volumes/kubernetes.io~empty-dir"}, base, "not one of the kubelet's mounts"},
		{"inside an emptyDir", []string{pod1 + "/volumes/kubernetes.io~empty-dir/data/x"}, base, "not one of the kubelet's mounts"},
		{"other container's subPath", []string{pod1 + "/volume-subpaths/data/other/1"}, base, "not one of the kubelet's mounts"},
		{"other container's termination-log", []string{pod1 + "/containers/other/abc"}, base, "not one of the kubelet's mounts"},
		{"plugin data", []string{pod1 + "/plugins/kubernetes.io~empty-dir/data"}, base, "not one of the kubelet's mounts"},
		{"emptyDir swapped for a link", []string{pod1 + "/volumes/kubernetes.io~empty-dir/flip"}, base, "symbolic link"},
		{"termination-log swapped for a link", []string{pod1 + "/containers/main/lnk"}, base, "symbolic link"},
		{"termination-log is a directory", []string{pod1 + "/containers/main/dir"}, base, "not a regular file"},
		{"kubelet root through a link", []string{"/var/lib/kubelet/pods/u1/etc-hosts"}, base, "inside the kubelet's root directory"},
		{"allowed link into the pod dir", []string{"/data/link-to-pods"}, withPaths("/data"), `(a link to "/persist/evelet/kubelet/root/pods/u1"), inside the kubelet's root directory`},
		{"local PV of the pod-logs dir", []string{pod1 + "/volumes/kubernetes.io~local-volume/logs"}, withPaths("/persist"), `a bind mount of "/persist/evelet/logs/pods", inside the kubelet's pod-logs directory ("/persist/evelet/logs/pods"); no config item`},
		{"subPathExpr of a local PV of the pod-logs dir", []string{pod1 + "/volume-subpaths/logs/main/9"}, withPaths("/"), `a bind mount of "/persist/evelet/logs/pods/default_p_u1", inside the kubelet's pod-logs directory`},
		{"local PV of the kubelet's pods dir", []string{pod1 + "/volumes/kubernetes.io~local-volume/pods"}, withPaths("/persist"), "not this pod's own volume"},
		{"pod dir by subPathExpr $(UID)", []string{pod1 + "/volume-subpaths/poddir/main/4"}, base, "not this pod's own volume"},
		{"pod dir by subPathExpr, owner allowed /persist", []string{pod1 + "/volume-subpaths/poddir/main/4"}, withPaths("/persist"), "not this pod's own volume"},
		{"subPath of another pod's secret", []string{pod1 + "/volume-subpaths/stolen/main/3"}, base, "not this pod's own volume"},
		{"subPath of another pod's token tmpfs", []string{pod1 + "/volume-subpaths/token/main/5"}, base, "not this pod's own volume"},
		{"subPath of another pod's Memory emptyDir", []string{pod1 + "/volume-subpaths/mem/main/6"}, base, "not this pod's own volume"},
		{"local PV of another pod's tmpfs", []string{pod1 + "/volumes/kubernetes.io~local-volume/pv3"}, withPaths("/"), "not this pod's own volume"},
		{"subPath of a local PV of another pod's tmpfs", []string{pod1 + "/volume-subpaths/pv3/main/7"}, base, "not this pod's own volume"},
		{"hostPath subPath of /config", []string{pod1 + "/volume-subpaths/cfg/main/0"}, base, `a bind mount of "/config", inside EVE's device identity and keys ("/config"); no config item`},
		{"hostPath subPath of /data", []string{pod1 + "/volume-subpaths/dat/main/10"}, base, `a bind mount of "/data/sub"; the device owner can allow it by adding "/data/sub"`},
		{"local PV of /data", []string{pod1 + "/volumes/kubernetes.io~local-volume/pv1"}, base, `a bind mount of "/data"`},
		{"prefix by elements", []string{"/database"}, withPaths("/data"), `"/database"`},
		{"link out of an allowed dir", []string{"/data/link-to-config/x"}, withPaths("/data"), `(a link to "/config/x")`},

		{"config allowed, still refused", []string{"/config"}, withPaths("/config"), "no config item can allow this"},
		{"stock CDI spec dir, allowed, still refused", []string{"/etc/cdi/x.json"}, withPaths("/etc"), `inside the stock CDI spec directory ("/etc/cdi"); no config item can allow this`},
		{"config subPath allowed, still refused", []string{pod1 + "/volume-subpaths/cfg/main/0"}, withPaths("/config"), "no config item can allow this"},
		{"data allowed", []string{"/data/x", pod1 + "/volume-subpaths/dat/main/10"}, withPaths("/data"), ""},
		{"local PV allowed", []string{pod1 + "/volumes/kubernetes.io~local-volume/pv1"}, withPaths("/data"), ""},
		{"everything allowed", []string{"/dev/mem", "/data", pod1 + "/volume-subpaths/dat/main/10"}, withPaths("/"), ""},
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
	if v := c.container(sb, mounts(pod1+"/volume-subpaths/data/main/1")); v == nil || !strings.Contains(v.Error(), "no /proc") {
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

// The mount table comes from github.com/moby/sys/mountinfo; this checks
// the conversion on the test's own table.
func TestRealMounts(t *testing.T) {
	real, err := realFS{}.Mounts()
	if err != nil || len(real) == 0 || covering(real, "/") == nil || !strings.Contains(real[0].dev, ":") {
		t.Errorf("own mount table: %v, %v", real, err)
	}
}

// The kubelet's root directory may be a filesystem of its own: its
// directories are then the canonical place of the pod's on-disk files.
func TestHostPathsKubeletRootIsAMount(t *testing.T) {
	f := &fakeFS{table: []mountEntry{
		{"8:1", "/", "/"},
		{"8:9", "/", kroot},
		{"8:9", "/pods/u1/volumes/kubernetes.io~empty-dir/data/sub", pod1 + "/volume-subpaths/data/main/1"},
		{"8:9", "/pods/u1", pod1 + "/volume-subpaths/poddir/main/2"},
		{"8:9", "/pods/u2/volumes/kubernetes.io~empty-dir/data", pod1 + "/volume-subpaths/other/main/3"},
	}}
	c := &checker{p: Policy{KubeletRootDir: kroot}, fs: f}
	sb := pod("default", "p", "u1", nil)
	if v := c.container(sb, mounts(pod1+"/volume-subpaths/data/main/1", pod1+"/volumes/kubernetes.io~empty-dir/data")); v != nil {
		t.Errorf("emptyDir and its subPath refused: %v", v)
	}
	for _, p := range []string{pod1 + "/volume-subpaths/poddir/main/2", pod1 + "/volume-subpaths/other/main/3"} {
		if v := c.container(sb, mounts(p)); v == nil || v.Key != "" {
			t.Errorf("%s: %v", p, v)
		}
	}
}

func TestRealTypeBeneath(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "a/b"), 0o755)
	os.WriteFile(filepath.Join(dir, "a/file"), nil, 0o600)
	os.Symlink(filepath.Join(dir, "a"), filepath.Join(dir, "link"))
	os.Symlink("/etc/passwd", filepath.Join(dir, "a/leaf"))
	fs0 := realFS{}
	for rel, want := range map[string]fs.FileMode{"a": fs.ModeDir, "a/b": fs.ModeDir, "a/file": 0} {
		if got, err := fs0.TypeBeneath(dir, rel); err != nil || got != want {
			t.Errorf("%s: %v, %v; want %v", rel, got, err, want)
		}
	}
	if got, err := fs0.TypeBeneath(dir, "a/leaf"); err == nil && got&fs.ModeSymlink == 0 {
		t.Errorf("a link as the last element: %v", got)
	}
	for _, rel := range []string{"link/b", "link/file", "a/../../etc", "missing"} {
		if got, err := fs0.TypeBeneath(dir, rel); err == nil {
			t.Errorf("%s: %v, want an error", rel, got)
		}
	}
	// The same without openat2.
	rfd, _ := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	defer unix.Close(rfd)
	if fd, err := openNoFollow(rfd, "link/b"); err == nil {
		unix.Close(fd)
		t.Error("openNoFollow followed a link")
	}
	if fd, err := openNoFollow(rfd, "a/b"); err != nil {
		t.Errorf("openNoFollow a/b: %v", err)
	} else {
		unix.Close(fd)
	}
}
