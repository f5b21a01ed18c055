// Package doctor is `evelet doctor`: preflight checks and diagnosis of
// what evelet needs on a device (cgroups, containerd, KVM, CNI plugins,
// tools) and of its standing with the cluster (reachability, clock and
// version skew, certificates). Each check reads the same paths and flags
// the agent uses, so it runs on a device and in tests against temp dirs.
package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"text/tabwriter"
	"time"

	"github.com/lf-edge/evelet/eve/pubsub"
)

// Status is a check's verdict.
type Status string

const (
	OK   Status = "OK"
	Warn Status = "WARN"
	Fail Status = "FAIL"
)

// Result is one check's verdict: what was found, and the fix when it is
// not OK.
type Result struct {
	Check  string `json:"check"`
	Status Status `json:"status"`
	Found  string `json:"found"`
	Fix    string `json:"fix,omitempty"`
}

// Config is what the checks look at: the agent's own flags, plus the host
// files tests point elsewhere.
type Config struct {
	StateDir           string
	EVERoot            pubsub.Root
	JoinFile           string // non-empty: the EVE channel is not used
	ContainerdEndpoint string

	// CNIBinDir and CNIConfDir are the agent's --cni-bin-dir/--cni-conf-dir
	// (both set: evelet-cni is the pod network); DefaultNetwork its delegate.
	CNIBinDir, CNIConfDir, DefaultNetwork string
	// NADPluginTypes and NADIPAMTypes are what NetworkAttachmentDefinitions
	// may use (the agent's flags, else its defaults).
	NADPluginTypes, NADIPAMTypes []string
	// OwnPlugins are the CNI plugins the agent installs itself.
	OwnPlugins []string

	VMPods       bool
	VMCNIConfDir string
	VMCNIBinDirs []string
	KVMDevice    string

	KubeProxy bool
	// NodeDNS is the agent's --node-dns.
	NodeDNS bool
	// Self is the evelet executable the agent runs as; the role binaries
	// are beside it (internal/nodebin).
	Self string
	// KernelRelease and KernelConfig are the running kernel's release
	// ("": uname) and config files to read, first readable wins (empty:
	// /proc/config.gz, /boot/config-<release>), for NftKernel.
	KernelRelease string
	KernelConfig  []string

	// KubeletCgroupRoot and CgroupDriver are the agent's
	// --kubelet-cgroup-root and --cgroup-driver.
	KubeletCgroupRoot, CgroupDriver string

	// KubeletVersion is the vendored kubelet's version (version.Kubelet).
	KubeletVersion string

	// Host files; empty means the real ones.
	MountInfo string // /proc/self/mountinfo
	CPUInfo   string // /proc/cpuinfo

	// LookPath finds programs; nil means exec.LookPath.
	LookPath func(string) (string, error)
	// Now is the local clock; nil means time.Now.
	Now func() time.Time
	// Timeout bounds each network probe; 0 means 5s.
	Timeout time.Duration

	// kvmProbe says whether the KVM device creates VMs; tests, which
	// have no KVM device, replace it.
	kvmProbe func(path string) error
}

func (c *Config) defaults() {
	if c.MountInfo == "" {
		c.MountInfo = "/proc/self/mountinfo"
	}
	if c.CPUInfo == "" {
		c.CPUInfo = "/proc/cpuinfo"
	}
	if c.LookPath == nil {
		c.LookPath = exec.LookPath
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	if c.kvmProbe == nil {
		c.kvmProbe = createVM
	}
	if c.KVMDevice == "" {
		c.KVMDevice = "/dev/kvm"
	}
}

// Run runs every check, in a fixed order.
func Run(ctx context.Context, cfg Config) []Result {
	cfg.defaults()
	var out []Result
	out = append(out, RoleBinaries(cfg))
	out = append(out, Cgroups(cfg))
	out = append(out, Containerd(ctx, cfg))
	out = append(out, KVM(cfg))
	out = append(out, QEMU(cfg))
	out = append(out, CNI(cfg)...)
	out = append(out, Nft(cfg), NftKernel(cfg))
	out = append(out, EVEPubsub(cfg))
	out = append(out, Cluster(ctx, cfg)...)
	out = append(out, ClientCert(cfg), ServingCert(cfg))
	return out
}

// Failed says whether any result is a FAIL (doctor's exit code).
func Failed(rs []Result) bool {
	for _, r := range rs {
		if r.Status == Fail {
			return true
		}
	}
	return false
}

// WriteText prints one block per check: the verdict and what was found,
// then the fix.
func WriteText(w io.Writer, rs []Result) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Status, r.Check, r.Found)
		if r.Fix != "" {
			fmt.Fprintf(tw, "\t\tfix: %s\n", r.Fix)
		}
	}
	return tw.Flush()
}

// WriteJSON prints the results as a JSON array.
func WriteJSON(w io.Writer, rs []Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rs)
}
