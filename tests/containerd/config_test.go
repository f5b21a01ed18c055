package containerd

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestLayoutDefaults(t *testing.T) {
	dir := t.TempDir()
	l, err := newLayout(Options{Dir: dir, RuncBinary: "/bin/sh"})
	if err != nil {
		t.Fatal(err)
	}
	if l.ownSocketDir || !strings.HasPrefix(l.socket, l.dir+"/") {
		t.Errorf("socket %s not under %s", l.socket, l.dir)
	}
	if l.cniBinDir != "/usr/lib/cni" || l.bridge != "evelet0" || l.podCIDR.String() != "10.88.0.0/16" ||
		l.snapshotter != "overlayfs" || l.sandboxImage != "localhost/evelet/pause:3.10" {
		t.Errorf("defaults: %+v", l)
	}
	if l.cniConfDir != filepath.Join(l.dir, "cni", "net.d") {
		t.Errorf("CNI conf dir %s", l.cniConfDir)
	}
}

func TestLayoutLongDirGetsShortSocket(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	l, err := newLayout(Options{Dir: dir, RuncBinary: "/bin/sh"})
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(l.socketDir)
	if !l.ownSocketDir || !strings.HasPrefix(l.socket, "/tmp/evctrd-") {
		t.Errorf("socket %s for a long dir", l.socket)
	}
	if len(l.socket)+len(".ttrpc") >= maxSocketPath {
		t.Errorf("socket path %d chars", len(l.socket))
	}
}

func TestLayoutRejects(t *testing.T) {
	for name, o := range map[string]Options{
		"no dir":      {},
		"long bridge": {Dir: t.TempDir(), BridgeName: "a-very-long-bridge0"},
		"bad cidr":    {Dir: t.TempDir(), PodCIDR: "10.0.0.0"},
		"quote":       {Dir: t.TempDir(), SandboxImage: `x"y`},
		"bad network": {Dir: t.TempDir(), NetworkName: "../x"},
	} {
		o.RuncBinary = "/bin/sh"
		if _, err := newLayout(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestConflist(t *testing.T) {
	l, err := newLayout(Options{Dir: t.TempDir(), RuncBinary: "/bin/sh", PodCIDR: "10.99.0.0/24", BridgeName: "evtest9"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.conflist()
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		Plugins    []struct {
			Type      string `json:"type"`
			Bridge    string `json:"bridge"`
			IsGateway bool   `json:"isGateway"`
			IPMasq    bool   `json:"ipMasq"`
			IPAM      struct {
				Type   string `json:"type"`
				Ranges [][]struct {
					Subnet string `json:"subnet"`
				} `json:"ranges"`
				Routes []struct {
					Dst string `json:"dst"`
				} `json:"routes"`
				DataDir string `json:"dataDir"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatal(err)
	}
	if conf.CNIVersion != "1.0.0" || conf.Name != "evelet-default" || len(conf.Plugins) != 2 {
		t.Fatalf("conflist %s", b)
	}
	br := conf.Plugins[0]
	if br.Type != "bridge" || br.Bridge != "evtest9" || !br.IsGateway || !br.IPMasq ||
		br.IPAM.Type != "host-local" || br.IPAM.Ranges[0][0].Subnet != "10.99.0.0/24" ||
		br.IPAM.Routes[0].Dst != "0.0.0.0/0" || !strings.HasPrefix(br.IPAM.DataDir, l.dir+"/") {
		t.Errorf("bridge plugin %+v", br)
	}
	if conf.Plugins[1].Type != "portmap" {
		t.Errorf("second plugin %q, want portmap", conf.Plugins[1].Type)
	}
}

// A network name of its own names the conflist file and the network in it.
func TestConflistNetworkName(t *testing.T) {
	l, err := newLayout(Options{Dir: t.TempDir(), RuncBinary: "/bin/sh", NetworkName: "evelet-demo"})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.writeFiles(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(l.cniConfDir, "10-evelet-demo.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(b, &conf); err != nil || conf.Name != "evelet-demo" {
		t.Errorf("conflist name %q (%v), want evelet-demo", conf.Name, err)
	}
}

// TestConfigParsedByContainerd has containerd itself parse the generated
// configuration and checks the merged result.
func TestConfigParsedByContainerd(t *testing.T) {
	bin, err := findBinary("", "containerd")
	if err != nil {
		t.Skipf("needs containerd (apt-get install containerd): %v", err)
	}
	l, err := newLayout(Options{Dir: t.TempDir(), RuncBinary: "/bin/sh", RestrictOOMScoreAdj: true, SandboxImage: "localhost/x/pause:1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.writeFiles(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--config", l.configPath, "config", "dump").CombinedOutput()
	if err != nil {
		t.Fatalf("containerd config dump: %v\n%s", err, out)
	}
	dump := string(out)
	for _, want := range []string{
		`root = "` + l.root + `"`,
		`state = "` + l.state + `"`,
		`address = "` + l.socket + `"`,
		`sandbox_image = "localhost/x/pause:1"`,
		`restrict_oom_score_adj = true`,
		`disable_apparmor = true`,
		`enable_selinux = false`,
		`netns_mounts_under_state_dir = true`,
		`bin_dir = "/usr/lib/cni"`,
		`conf_dir = "` + l.cniConfDir + `"`,
		`snapshotter = "overlayfs"`,
		`runtime_type = "io.containerd.runc.v2"`,
		`SystemdCgroup = false`,
		`Root = "` + l.runcRoot + `"`,
		`BinaryName = "/bin/sh"`,
		`path = "` + l.optDir + `"`,
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("containerd's view of the config lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("config dump:\n%s", dump)
	}
}

// Mounts finds a real mount whose path has a space and a backslash (which
// /proc/self/mountinfo escapes as \040 and \134), deepest first.
func TestMountsUnderEscapedPath(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts tmpfs")
	}
	dir := t.TempDir()
	outer := filepath.Join(dir, `a b\c`)
	inner := filepath.Join(outer, "in")
	if err := os.MkdirAll(outer, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", outer, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(inner, syscall.MNT_DETACH); syscall.Unmount(outer, syscall.MNT_DETACH) })
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", inner, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	got, err := Mounts(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != inner || got[1] != outer {
		t.Fatalf("Mounts(%s) = %q, want [%s %s]", dir, got, inner, outer)
	}
}

// TestLayoutRunDir: with RunDir, what a reboot loses (state, runc root,
// socket, IPAM) is under RunDir and what it keeps (root, config, log,
// CNI conf) under Dir, and the config says so.
func TestLayoutRunDir(t *testing.T) {
	dir, run := t.TempDir(), t.TempDir()
	l, err := newLayout(Options{Dir: dir, RunDir: run, RuncBinary: "/bin/sh", NetNS: "/proc/self/ns/net"})
	if err != nil {
		t.Fatal(err)
	}
	run, _ = filepath.EvalSymlinks(run)
	for _, p := range []string{l.state, l.runcRoot, l.socket, l.ipamDataDir} {
		if !strings.HasPrefix(p, run+"/") {
			t.Errorf("%s not under RunDir %s", p, run)
		}
	}
	for _, p := range []string{l.root, l.configPath, l.logPath, l.cniConfDir} {
		if !strings.HasPrefix(p, l.dir+"/") {
			t.Errorf("%s not under Dir %s", p, l.dir)
		}
	}
	if l.netns != "/proc/self/ns/net" {
		t.Errorf("netns %q", l.netns)
	}
	toml := l.configTOML()
	for _, want := range []string{`state = "` + l.state + `"`, `Root = "` + l.runcRoot + `"`, `address = "` + l.socket + `"`, `root = "` + l.root + `"`} {
		if !strings.Contains(toml, want) {
			t.Errorf("config lacks %s", want)
		}
	}
	if _, err := newLayout(Options{Dir: dir, RuncBinary: "/bin/sh", NetNS: "/run/netns/h1-does-not-exist"}); err == nil {
		t.Error("a missing NetNS was accepted")
	}
}
