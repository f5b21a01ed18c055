package doctor

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/internal/layout"
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// device is a healthy device laid out in temp dirs: every check passes
// against it, and each test removes one prerequisite.
type device struct {
	t       *testing.T
	dir     string
	cfg     Config
	tools   map[string]string // LookPath's answers
	cri     *fakeCRI
	api     *httptest.Server
	apiVer  string // what /version answers
	creds   layout.Credentials
	cgroup2 string // cgroup2 mount point, when the mount table has one
}

func newDevice(t *testing.T) *device {
	t.Helper()
	d := &device{t: t, dir: t.TempDir(), tools: map[string]string{}, apiVer: "v1.35.4"}
	p := func(rel ...string) string { return filepath.Join(append([]string{d.dir}, rel...)...) }
	d.cfg = Config{
		StateDir:       p("persist", "evelet"),
		EVERoot:        pubsub.Root{Run: p("run"), Persist: p("persist")},
		CNIBinDir:      p("cni", "bin"),
		CNIConfDir:     p("cni", "conf"),
		DefaultNetwork: "evelet-default",
		NADPluginTypes: []string{"eve-ni"},
		NADIPAMTypes:   []string{"static", "host-local"},
		OwnPlugins:     []string{"evelet-cni", "eve-ni"},
		VMPods:         true,
		VMCNIConfDir:   p("vm", "conf"),
		VMCNIBinDirs:   []string{p("vm", "bin1"), p("vm", "bin2")},
		KVMDevice:      p("dev", "kvm"),
		KubeProxy:      true,
		// The fixture's hierarchies are mounted under the temp dir.
		KubeletCgroupRoot: "/evelet",
		CgroupDriver:      "cgroupfs",
		KubeletVersion:    "v1.35.4",
		MountInfo:         p("proc", "mountinfo"),
		CPUInfo:           p("proc", "cpuinfo"),
		Timeout:           3 * time.Second,
		// A regular file stands for the KVM device: it must open.
		kvmProbe: func(path string) error {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				return fmt.Errorf("no %s", path)
			}
			return f.Close()
		},
		LookPath: func(name string) (string, error) {
			if path, ok := d.tools[name]; ok {
				return path, nil
			}
			return "", fmt.Errorf("exec: %q: executable file not found in $PATH", name)
		},
	}
	d.creds = layout.State{Dir: d.cfg.StateDir}.Credentials()
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "nft"} {
		d.tools[tool] = "/usr/bin/" + tool
	}
	d.mountInfo(v1MountInfo)
	for _, h := range []string{"cpu,cpuacct", "memory", "cpuset", "pids", "devices"} {
		d.writeMode(filepath.Join(d.cgroupMount(h), "evelet", "tasks"), "", 0o644)
	}
	d.write("proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse\n\n")
	d.write("dev/kvm", "")
	// The installed build: evelet and its role binaries side by side.
	d.cfg.Self, d.cfg.NodeDNS = p("bin", "evelet"), true
	for _, b := range []string{"evelet", "evelet-kubelet", "evelet-kube-proxy", "evelet-dns", "evelet-vmm"} {
		d.writeMode(filepath.Join("bin", b), "#!/bin/false\n", 0o755)
	}
	d.cfg.KernelRelease = "6.1.112-linuxkit"
	d.cfg.KernelConfig = []string{d.path("proc/config.gz")}
	d.kernelConfig(eveKernelConfig)
	for _, plugin := range []string{"bridge", "host-local", "portmap", "static"} {
		d.writeMode("cni/bin/"+plugin, "#!/bin/sh\n", 0o755)
	}
	d.write("cni/conf/10-default.conflist", `{"cniVersion":"1.0.0","name":"evelet-default","plugins":[
		{"type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.244.0.0/24"}},
		{"type":"portmap","capabilities":{"portMappings":true}}]}`)
	d.write("vm/conf/10-vm.conflist", `{"cniVersion":"1.0.0","name":"vm-net","plugins":[
		{"type":"bridge","bridge":"vm0","ipam":{"type":"host-local","subnet":"10.245.0.0/24"}},
		{"type":"portmap","capabilities":{"portMappings":true}}]}`)
	d.writeMode("vm/bin1/bridge", "#!/bin/sh\n", 0o755)
	d.writeMode("vm/bin2/host-local", "#!/bin/sh\n", 0o755)
	d.writeMode("vm/bin2/portmap", "#!/bin/sh\n", 0o755)
	d.write("run/zedagent/EdgeNodeClusterConfig/global.json", "{}")
	d.write("persist/checkpoint/lastconfig", "config")
	d.startCRI()
	d.startAPIServer()
	d.join()
	return d
}

// v1MountInfo is a cgroup v1 host's mount table, its hierarchies under
// the fixture's sys/fs/cgroup (the mountinfo format escapes nothing here).
const v1MountInfo = `25 1 0:23 / DIR/sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
26 25 0:24 / DIR/sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
27 25 0:25 / DIR/sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
28 25 0:26 / DIR/sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset
29 25 0:27 / DIR/sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
30 25 0:28 / DIR/sys/fs/cgroup/devices rw,nosuid - cgroup cgroup rw,devices
`

func (d *device) cgroupMount(h string) string { return d.path("sys/fs/cgroup/" + h) }

// mountInfo writes a mount table, DIR standing for the fixture's root.
func (d *device) mountInfo(table string) {
	d.write("proc/mountinfo", strings.ReplaceAll(table, "DIR", d.dir))
}

func (d *device) path(rel string) string { return filepath.Join(d.dir, rel) }

func (d *device) write(rel, content string) { d.writeMode(rel, content, 0o644) }

func (d *device) writeMode(rel, content string, mode os.FileMode) {
	d.t.Helper()
	path := rel
	if !filepath.IsAbs(rel) {
		path = d.path(rel)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		d.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		d.t.Fatal(err)
	}
}

func (d *device) remove(path string) {
	d.t.Helper()
	if !filepath.IsAbs(path) {
		path = d.path(path)
	}
	if err := os.RemoveAll(path); err != nil {
		d.t.Fatal(err)
	}
}

// useCgroup2 replaces the mount table with a cgroup v2 host whose root
// enables controllers.
func (d *device) useCgroup2(controllers string) {
	d.cgroup2 = d.path("cgroup2")
	d.write("cgroup2/cgroup.controllers", controllers+"\n")
	d.write("cgroup2/evelet/cgroup.procs", "")
	d.mountInfo("25 1 0:23 / DIR/cgroup2 rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
}

// fakeCRI is a CRI runtime service on a unix socket: Version and Status.
type fakeCRI struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	networkReady bool
	socket       string
}

func (f *fakeCRI) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "containerd", RuntimeVersion: "v2.1.0", RuntimeApiVersion: "v1"}, nil
}

func (f *fakeCRI) Status(context.Context, *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	return &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
		{Type: runtimeapi.RuntimeReady, Status: true},
		{Type: runtimeapi.NetworkReady, Status: f.networkReady, Reason: "NetworkPluginNotReady", Message: "cni plugin not initialized"},
	}}}, nil
}

func (d *device) startCRI() {
	// Unix socket paths are short; t.TempDir's can be too long.
	dir, err := os.MkdirTemp("", "doctor-cri")
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { os.RemoveAll(dir) })
	d.cri = &fakeCRI{networkReady: true, socket: filepath.Join(dir, "c.sock")}
	l, err := net.Listen("unix", d.cri.socket)
	if err != nil {
		d.t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, d.cri)
	go srv.Serve(l)
	d.t.Cleanup(srv.Stop)
	d.cfg.ContainerdEndpoint = "unix://" + d.cri.socket
}

// startAPIServer serves GET /version over TLS, as an apiserver does to
// anonymous clients.
func (d *device) startAPIServer() {
	d.api = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/version" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"gitVersion": d.apiVer})
	}))
	d.t.Cleanup(d.api.Close)
}

// join writes what a joined device has: join record, cluster CA, the
// kubelet's kubeconfig and client certificate, its serving certificate.
func (d *device) join() {
	rec, _ := json.Marshal(map[string]any{"apiServer": d.api.URL, "caPin": "sha256:00", "nodeName": "eve-1", "joinedAt": time.Now().UTC()})
	d.writeMode(d.creds.JoinRecord(), string(rec), 0o600)
	d.writeMode(d.creds.ClusterCA(), string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d.api.Certificate().Raw})), 0o600)
	now := time.Now()
	client := filepath.Join(d.creds.CertDir(), "kubelet-client-current.pem")
	d.writeMode(client, selfSigned(d.t, "system:node:eve-1", now.Add(-time.Hour), now.Add(365*24*time.Hour)), 0o600)
	d.writeMode(d.creds.Kubeconfig(), fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: default
  cluster: {server: %q, certificate-authority: %q}
users:
- name: default
  user: {client-certificate: %q, client-key: %q}
contexts:
- name: default
  context: {cluster: default, user: default}
current-context: default
`, d.api.URL, d.creds.ClusterCA(), client, client), 0o600)
	d.writeServing(now.Add(-time.Hour), now.Add(365*24*time.Hour))
}

func (d *device) writeServing(from, until time.Time) {
	d.writeMode(filepath.Join(d.creds.CertDir(), "kubelet-server-current.pem"), selfSigned(d.t, "system:node:eve-1", from, until), 0o600)
}

func (d *device) writeClient(from, until time.Time) {
	d.writeMode(filepath.Join(d.creds.CertDir(), "kubelet-client-current.pem"), selfSigned(d.t, "system:node:eve-1", from, until), 0o600)
}

// selfSigned is a PEM certificate and key for cn, valid from..until.
func selfSigned(t *testing.T, cn string, from, until time.Time) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: from, NotAfter: until}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})) +
		string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}))
}

func (d *device) run() []Result { return Run(context.Background(), d.cfg) }

func find(t *testing.T, rs []Result, check string) Result {
	t.Helper()
	for _, r := range rs {
		if r.Check == check {
			return r
		}
	}
	t.Fatalf("no result for check %q in %+v", check, rs)
	return Result{}
}

// eveKernelConfig has what kube-proxy's nftables mode needs, some of it as
// modules, as an EVE kernel with NFT_NUMGEN added would.
const eveKernelConfig = `# Linux kernel config
CONFIG_NF_TABLES=y
CONFIG_NF_TABLES_INET=y
CONFIG_NFT_CT=y
CONFIG_NFT_NAT=y
CONFIG_NFT_MASQ=y
CONFIG_NFT_REJECT=y
CONFIG_NFT_HASH=y
CONFIG_NFT_NUMGEN=m
# CONFIG_NFT_FIB_IPV4 is not set
`

// kernelConfig writes the fixture's /proc/config.gz.
func (d *device) kernelConfig(text string) {
	d.t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write([]byte(text))
	if err := zw.Close(); err != nil {
		d.t.Fatal(err)
	}
	d.write("proc/config.gz", b.String())
}
