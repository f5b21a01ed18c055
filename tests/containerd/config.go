package containerd

import (
	"encoding/json"
	"fmt"
	"github.com/lf-edge/evelet/internal/atomicfile"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/lf-edge/evelet/images"
)

const (
	// Namespace is the containerd namespace of the CRI plugin (Kubernetes).
	Namespace = "k8s.io"
	// NetworkName is the default name of the default pod network's CNI
	// conflist (Options.NetworkName overrides it).
	NetworkName = "evelet-default"

	defaultCNIBinDir   = "/usr/lib/cni"
	defaultPodCIDR     = "10.88.0.0/16"
	defaultBridge      = "evelet0"
	defaultSnapshotter = "overlayfs"

	// maxSocketPath keeps the gRPC socket and its ".ttrpc" sibling well
	// inside the 108 bytes of sun_path.
	maxSocketPath = 100
)

// layout holds every path and setting of one harness, derived from Options.
type layout struct {
	dir          string // absolute, symlinks resolved
	runDir       string // Options.RunDir, absolute, symlinks resolved ("" = none)
	configPath   string
	logPath      string
	root         string // containerd root
	state        string // containerd state
	optDir       string // io.containerd.internal.v1.opt
	runcRoot     string // runc --root (per namespace below it)
	socket       string
	socketDir    string // directory holding the socket
	ownSocketDir bool   // socketDir is a short /tmp dir made for us
	cniBinDir    string
	cniConfDir   string
	ipamDataDir  string // host-local's dataDir
	podCIDR      *net.IPNet
	bridge       string
	network      string // CNI network name
	sandboxImage string
	snapshotter  string
	restrictOOM  bool
	mirrors      map[string]string
	runc         string // runc binary, absolute
	netns        string // network namespace path containerd runs in ("" = ours)
}

// newLayout validates o and fills in defaults. It creates no files, except
// the short socket directory under /tmp when Dir is too long.
func newLayout(o Options) (*layout, error) {
	if o.Dir == "" {
		return nil, fmt.Errorf("containerd: Options.Dir is required")
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("containerd: %w", err)
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, fmt.Errorf("containerd: %w", err)
	}
	// Mount points are compared with /proc/self/mountinfo, which shows real
	// paths: resolve symlinks once here.
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		return nil, fmt.Errorf("containerd: %w", err)
	}
	l := &layout{
		dir:          dir,
		configPath:   filepath.Join(dir, "config.toml"),
		logPath:      filepath.Join(dir, "containerd.log"),
		root:         filepath.Join(dir, "root"),
		state:        filepath.Join(dir, "state"),
		optDir:       filepath.Join(dir, "opt"),
		runcRoot:     filepath.Join(dir, "runc"),
		socketDir:    filepath.Join(dir, "run"),
		cniBinDir:    o.CNIBinDir,
		cniConfDir:   o.CNIConfDir,
		ipamDataDir:  filepath.Join(dir, "cni", "ipam"),
		bridge:       o.BridgeName,
		network:      o.NetworkName,
		sandboxImage: o.SandboxImage,
		snapshotter:  o.Snapshotter,
		restrictOOM:  o.RestrictOOMScoreAdj,
		mirrors:      o.RegistryMirrors,
	}
	if o.RunDir != "" {
		run, err := filepath.Abs(o.RunDir)
		if err != nil {
			return nil, fmt.Errorf("containerd: %w", err)
		}
		if err := os.MkdirAll(run, 0o711); err != nil {
			return nil, fmt.Errorf("containerd: %w", err)
		}
		if run, err = filepath.EvalSymlinks(run); err != nil {
			return nil, fmt.Errorf("containerd: %w", err)
		}
		l.runDir = run
		l.state = filepath.Join(run, "state")
		l.runcRoot = filepath.Join(run, "runc")
		l.socketDir = run
		l.ipamDataDir = filepath.Join(run, "cni", "ipam")
	}
	if o.NetNS != "" {
		if _, err := os.Stat(o.NetNS); err != nil {
			return nil, fmt.Errorf("containerd: NetNS: %w", err)
		}
		l.netns = o.NetNS
	}
	if l.cniBinDir == "" {
		l.cniBinDir = defaultCNIBinDir
	}
	if l.cniConfDir == "" {
		l.cniConfDir = filepath.Join(dir, "cni", "net.d")
	}
	if l.bridge == "" {
		l.bridge = defaultBridge
	}
	if l.network == "" {
		l.network = NetworkName
	}
	if !validNetworkName(l.network) {
		return nil, fmt.Errorf("containerd: network name %q: use letters, digits, '-', '_' and '.'", l.network)
	}
	if len(l.bridge) > 15 {
		return nil, fmt.Errorf("containerd: bridge name %q is longer than 15 characters", l.bridge)
	}
	if l.sandboxImage == "" {
		l.sandboxImage = images.PauseRef
	}
	if l.snapshotter == "" {
		l.snapshotter = defaultSnapshotter
	}
	cidr := o.PodCIDR
	if cidr == "" {
		cidr = defaultPodCIDR
	}
	if _, l.podCIDR, err = net.ParseCIDR(cidr); err != nil {
		return nil, fmt.Errorf("containerd: PodCIDR: %w", err)
	}
	if l.runc, err = findBinary(o.RuncBinary, "runc"); err != nil {
		return nil, err
	}
	for h, u := range l.mirrors {
		if strings.ContainsAny(h+u, "\x00\n\r\"\\") {
			return nil, fmt.Errorf("containerd: unsupported character in registry mirror %q = %q", h, u)
		}
	}
	for _, p := range []string{l.configPath, l.root, l.state, l.runcRoot, l.cniBinDir, l.cniConfDir, l.ipamDataDir, l.sandboxImage} {
		if strings.ContainsAny(p, "\x00\n\r\"\\") {
			return nil, fmt.Errorf("containerd: unsupported character in %q", p)
		}
	}
	l.socket = filepath.Join(l.socketDir, "containerd.sock")
	if len(l.socket)+len(".ttrpc") >= maxSocketPath {
		short, err := os.MkdirTemp("/tmp", "evctrd-")
		if err != nil {
			return nil, fmt.Errorf("containerd: short socket dir: %w", err)
		}
		l.socketDir, l.ownSocketDir = short, true
		l.socket = filepath.Join(short, "containerd.sock")
	}
	return l, nil
}

// searchPath is appended to $PATH for lookups and for containerd's own
// environment: runc and iptables live in sbin directories that a non-login
// root shell may not have on its PATH.
const searchPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// findBinary resolves explicit (if set) or name on $PATH plus searchPath.
func findBinary(explicit, name string) (string, error) {
	if explicit != "" {
		if _, err := os.Stat(explicit); err != nil {
			return "", fmt.Errorf("containerd: %s: %w", name, err)
		}
		return explicit, nil
	}
	for _, d := range filepath.SplitList(os.Getenv("PATH") + ":" + searchPath) {
		if d == "" {
			continue
		}
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("containerd: %s not found on $PATH or in %s", name, searchPath)
}

// disabledPlugins are snapshotters that cannot work here or would probe
// the host (modprobe, pools) for nothing.
var disabledPlugins = []string{
	"io.containerd.snapshotter.v1.aufs",
	"io.containerd.snapshotter.v1.btrfs",
	"io.containerd.snapshotter.v1.devmapper",
	"io.containerd.snapshotter.v1.zfs",
}

// configTOML renders a containerd 1.6 configuration (version 2). Every path
// containerd would otherwise take from the host (/var/lib/containerd,
// /run/containerd, /opt/containerd, /run/containerd/runc, /var/run/netns,
// /etc/cni/net.d, /opt/cni/bin) points into the harness directory or to the
// configured CNI directories. Values were checked against
// `containerd config default` of 1.6.20.
func (l *layout) configTOML() string {
	q := func(s string) string { return `"` + s + `"` } // newLayout rejected '"' and '\'
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	var dis []string
	for _, p := range disabledPlugins {
		dis = append(dis, q(p))
	}
	w("# Written by github.com/lf-edge/evelet/tests/containerd. Do not edit.")
	w("version = 2")
	w("root = %s", q(l.root))
	w("state = %s", q(l.state))
	w("disabled_plugins = [%s]", strings.Join(dis, ", "))
	w("")
	w("[grpc]")
	w("  address = %s", q(l.socket))
	w("")
	w("[debug]")
	w("  level = \"info\"")
	w("")
	w("[plugins]")
	w("  [plugins.\"io.containerd.internal.v1.opt\"]")
	w("    path = %s", q(l.optDir))
	w("")
	w("  [plugins.\"io.containerd.grpc.v1.cri\"]")
	w("    sandbox_image = %s", q(l.sandboxImage))
	w("    # true only where the host lacks CAP_SYS_RESOURCE (test machines):")
	w("    # runc could not lower oom_score_adj and would fail every sandbox.")
	w("    restrict_oom_score_adj = %t", l.restrictOOM)
	w("    disable_apparmor = true")
	w("    enable_selinux = false")
	w("    systemd_cgroup = false")
	w("    # network namespaces under state/, not /var/run/netns")
	w("    netns_mounts_under_state_dir = true")
	w("    stream_server_address = \"127.0.0.1\"")
	w("    stream_server_port = \"0\"")
	w("")
	w("    [plugins.\"io.containerd.grpc.v1.cri\".containerd]")
	w("      snapshotter = %s", q(l.snapshotter))
	w("      default_runtime_name = \"runc\"")
	w("")
	w("      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]")
	w("        runtime_type = \"io.containerd.runc.v2\"")
	w("")
	w("        [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]")
	w("          BinaryName = %s", q(l.runc))
	w("          Root = %s", q(l.runcRoot))
	w("          # the host uses cgroupfs (cgroup v1), not systemd")
	w("          SystemdCgroup = false")
	w("")
	hosts := make([]string, 0, len(l.mirrors))
	for h := range l.mirrors {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	for _, h := range hosts {
		w("    [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.%s]", q(h))
		w("      endpoint = [%s]", q(l.mirrors[h]))
		w("")
	}
	w("    [plugins.\"io.containerd.grpc.v1.cri\".cni]")
	w("      bin_dir = %s", q(l.cniBinDir))
	w("      conf_dir = %s", q(l.cniConfDir))
	w("      max_conf_num = 1")
	return b.String()
}

// conflist renders the default pod network: a bridge with host-local IPAM
// over PodCIDR and a default route, plus portmap for hostPort. containerd's
// CRI adds the loopback interface by itself.
func (l *layout) conflist() ([]byte, error) {
	defRoute := "0.0.0.0/0"
	if l.podCIDR.IP.To4() == nil {
		defRoute = "::/0"
	}
	type obj = map[string]any
	conf := obj{
		"cniVersion": "1.0.0",
		"name":       l.network,
		"plugins": []obj{
			{
				"type":        "bridge",
				"bridge":      l.bridge,
				"isGateway":   true,
				"ipMasq":      true,
				"hairpinMode": true,
				"ipam": obj{
					"type":    "host-local",
					"ranges":  [][]obj{{{"subnet": l.podCIDR.String()}}},
					"routes":  []obj{{"dst": defRoute}},
					"dataDir": l.ipamDataDir,
				},
			},
			{
				"type":         "portmap",
				"capabilities": obj{"portMappings": true},
			},
		},
	}
	return json.MarshalIndent(conf, "", "  ")
}

// writeFiles writes the configuration and the CNI conflist and creates the
// directories containerd expects.
func (l *layout) writeFiles() error {
	for _, d := range []string{l.root, l.state, l.optDir, l.runcRoot, l.socketDir, l.cniConfDir, l.ipamDataDir} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return fmt.Errorf("containerd: %w", err)
		}
	}
	if err := atomicfile.WriteFile(l.configPath, []byte(l.configTOML()), 0o644); err != nil {
		return err
	}
	cl, err := l.conflist()
	if err != nil {
		return fmt.Errorf("containerd: %w", err)
	}
	return atomicfile.WriteFile(l.conflistPath(), append(cl, '\n'), 0o644)
}

// conflistPath is the default network's conflist in the CNI conf dir.
func (l *layout) conflistPath() string {
	return filepath.Join(l.cniConfDir, "10-"+l.network+".conflist")
}

// validNetworkName keeps the name usable as a file name (conflist, host-local
// data dir, libcni's result cache) and as CNI's network name.
func validNetworkName(s string) bool {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return s != "" && s[0] != '.'
}
