package devnet

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lf-edge/evelet/eve"
	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/tests/containerd"
	"github.com/lf-edge/evelet/tests/controlplane"
	"github.com/lf-edge/evelet/tests/evesim"
	"github.com/lf-edge/evelet/tests/internal/cgroups"
	"github.com/vishvananda/netlink"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ClusterID is the cluster UUID the simulated controller gives every
// device of a test (they all join the one control plane).
const ClusterID = "d3e7c0de-0000-4000-8000-00000000a11c"

// DeviceOptions shape one simulated device.
type DeviceOptions struct {
	// ControlPlane is the cluster the device joins. Its apiserver must
	// listen on the Net's host address (controlplane.Options.BindAddress
	// and AdvertiseAddress = Net.HostIP()). Required.
	ControlPlane *controlplane.ControlPlane
	// Evelet is the evelet binary. Required.
	Evelet string
	// Images are image tarballs (pause, busybox, ...) imported into the
	// device's containerd at the first Start; they stay in its persist.
	Images []string
	// Name is the EVE device name (default "<prefix>-<n>"); the node name is
	// derived from it as evelet does.
	Name string
	// EVE shapes the simulated EVE (release, old publishing layout).
	EVE evesim.Options
	// NoJoin: the first Start does not put the device into the cluster;
	// the test calls EVE().SetCluster itself (JoinCluster builds the usual
	// cluster intent).
	NoJoin bool
	// AgentArgs are appended to `evelet agent`'s command line.
	AgentArgs []string
	// EveletCNI makes evelet-cni the device's pod network, as on EVE: the
	// device's containerd reads its CNI plugins from <persist>/cni-bin (the
	// system plugins, linked) and the agent gets --cni-bin-dir and
	// --cni-conf-dir, installs evelet-cni there and writes its conflist,
	// which containerd loads before its own cni0 one.
	EveletCNI bool
	// ConfigItems are added to the cluster intent's config items (e.g.
	// evelet.pod-network=podcidr).
	ConfigItems map[string]string
	// Command, when set, runs in the device's namespace instead of
	// `evelet agent`: its argv, asked for at every start (a stock kubelet,
	// to compare evelet with). Evelet is then not required; the process
	// is treated as the agent (its log, Stop's SIGTERM, the power cycle).
	Command func(CommandContext) []string
}

// CommandContext is what a DeviceOptions.Command knows of the device it
// starts on.
type CommandContext struct {
	Dir        string // the device's directory (persist/, run/)
	NodeName   string
	IP         string // the device's address: the node IP
	CgroupRoot string // made in every hierarchy, as for the kubelet of evelet
	// CRIEndpoint is the device's running containerd, "unix://<socket>".
	CRIEndpoint string
}

// RebootOptions shape a simulated reboot.
type RebootOptions struct {
	// OSVersion is the EVE release the device boots into (default: the
	// one it runs): evesim's Reboot boots it from the other partition
	// (eve-release, ZbootStatus: tests/evesim/zboot.go).
	OSVersion string
	// OldEVE: the release booted publishes as EVE before 16.12.0 (only
	// read when OSVersion is set).
	OldEVE bool
}

// Device is one simulated EVE device: its own network namespace, containerd,
// evelet agent (with its kubelet) and EVE files, with EVE's split between
// <Dir>/persist (kept across reboots) and <Dir>/run (a tmpfs on EVE).
type Device struct {
	n    int
	net  *Net
	o    DeviceOptions
	dir  string
	name string // EVE device name
	node string

	nsName   string // network namespace, "<prefix>-<n>"
	hostVeth string
	ip       *net.IPNet
	podCIDR  string
	cgroup   string // kubelet cgroup root, "/<prefix>-<n>"
	eve      *evesim.Device

	mu        sync.Mutex
	ctrd      *containerd.Containerd
	ctrdSock  string
	netnsIno  uint64   // this boot's namespace (0: none)
	netnsInos []uint64 // every namespace the device had: a process left in an old one is still the device's
	agent     *exec.Cmd
	agentDone chan struct{}
	agentAt   time.Time // when this boot's agent (or Command) was started
	imported  bool
	closed    bool
	boots     int
	cut       bool // the link is cut (SetLink): the veth stays off the bridge
}

// NewDevice prepares device n (1..200; one Device per number at a time,
// the number names its namespace, address and cgroup): directories, the
// simulated EVE files, nothing running yet. t.Cleanup closes it, so a failing test leaves
// nothing behind; the agent log's tail goes to the test log then.
func (n *Net) NewDevice(t testing.TB, idx int, o DeviceOptions) *Device {
	t.Helper()
	if idx < 1 || idx > 200 {
		t.Fatalf("devnet: device number %d: want 1..200", idx)
	}
	if o.ControlPlane == nil || (o.Evelet == "" && o.Command == nil) {
		t.Fatal("devnet: DeviceOptions.ControlPlane and Evelet (or Command) are required")
	}
	base := n.prefix + "-" + strconv.Itoa(idx)
	if o.Name == "" {
		o.Name = base
	}
	dir, err := os.MkdirTemp("/tmp", base+"-")
	if err != nil {
		t.Fatal(err)
	}
	d := &Device{
		n: idx, net: n, o: o, dir: dir, name: o.Name,
		nsName:   base,
		hostVeth: n.prefix + strconv.Itoa(idx) + "h",
		ip:       n.deviceIP(idx),
		podCIDR:  fmt.Sprintf("10.244.%d.0/24", 20+idx),
		cgroup:   "/" + base,
	}
	if err := d.sweepStale(); err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	// The evesim device's Run and Persist are the device's own: <dir>/run
	// and <dir>/persist, as EVE's /run and /persist.
	if d.eve, err = evesim.NewWithOptions(dir, o.Name, o.EVE); err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	d.node = eve.NodeName(o.Name, d.eve.UUID)
	t.Cleanup(func() {
		if t.Failed() {
			keep := filepath.Join(os.TempDir(), "evelet-devnet-failed-"+filepath.Base(dir)+".log")
			if b, err := os.ReadFile(d.AgentLogPath()); err == nil {
				os.WriteFile(keep, b, 0o644)
				t.Logf("%s agent log tail (whole log: %s):\n%s", d.nsName, keep, tail(string(b), 60))
			}
		}
		if err := d.Close(); err != nil {
			t.Errorf("devnet: closing %s: %v", d.nsName, err)
		}
	})
	return d
}

// Dir is the device's directory: persist/, run/, agent.log.
func (d *Device) Dir() string { return d.dir }

// PersistDir is the device's /persist: kept across reboots.
func (d *Device) PersistDir() string { return filepath.Join(d.dir, "persist") }

// RunDir is the device's /run: emptied by a reboot.
func (d *Device) RunDir() string { return filepath.Join(d.dir, "run") }

// StateDir is evelet's --state-dir (<persist>/evelet).
func (d *Device) StateDir() string { return filepath.Join(d.PersistDir(), "evelet") }

// EveletRunDir is evelet's --run-dir (<run>/evelet).
func (d *Device) EveletRunDir() string { return filepath.Join(d.RunDir(), "evelet") }

// AgentLogPath is the agent's (and its kubelet's) log, appended across boots.
func (d *Device) AgentLogPath() string { return filepath.Join(d.dir, "agent.log") }

// EVE is the simulated EVE side of the device.
func (d *Device) EVE() *evesim.Device { return d.eve }

// NodeName is the Kubernetes node name evelet derives from the EVE name.
func (d *Device) NodeName() string { return d.node }

// IP is the device's address on the Net (its node InternalIP).
func (d *Device) IP() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ip.IP.String()
}

// NetNS is the name of the device's network namespace (/run/netns/<name>).
func (d *Device) NetNS() string { return d.nsName }

// CgroupRoot is the kubelet's cgroup root of the device.
func (d *Device) CgroupRoot() string { return d.cgroup }

// PodCIDR is the device's pod network.
func (d *Device) PodCIDR() string { return d.podCIDR }

// Containerd is the device's running containerd (nil when stopped).
func (d *Device) Containerd() *containerd.Containerd {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ctrd
}

// AgentPID is the running agent's pid (0 when stopped).
func (d *Device) AgentPID() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.agent == nil {
		return 0
	}
	return d.agent.Process.Pid
}

// AgentStartedAt is when the last boot's agent (or Command) process was
// started: after containerd was up, so a join time measured from it is the
// agent's and kubelet's, not containerd's.
func (d *Device) AgentStartedAt() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.agentAt
}

// Boots counts the device's starts (1 after the first Start).
func (d *Device) Boots() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.boots
}

// Cluster is the cluster intent JoinCluster gives: the control plane's
// apiserver on the Net, a fresh bootstrap token (K10 form), the device's
// address as ClusterIPPrefix (so the node IP is the device's).
func (d *Device) Cluster(ctx context.Context) (evesim.Cluster, error) {
	cp := d.o.ControlPlane
	tok, err := cp.CreateBootstrapToken(ctx, 2*time.Hour)
	if err != nil {
		return evesim.Cluster{}, err
	}
	k10, err := cp.K10Token(ctx, tok)
	if err != nil {
		return evesim.Cluster{}, err
	}
	items := map[string]string{"evelet.apiserver-url": cp.AdvertiseURL()}
	maps.Copy(items, d.o.ConfigItems)
	return evesim.Cluster{
		Name: "devnet", ID: ClusterID, JoinServerIP: d.net.HostIP(),
		ClusterInterface: "eth0", ClusterIPPrefix: d.ip.String(), Token: k10,
		// The test apiserver is not on 6443.
		ConfigItems: items,
	}, nil
}

// JoinCluster has the simulated controller put the device into the cluster.
func (d *Device) JoinCluster(ctx context.Context) error {
	c, err := d.Cluster(ctx)
	if err != nil {
		return err
	}
	return d.eve.SetCluster(c)
}

// Start boots the device: network namespace and veth (if not there), the
// kubelet's cgroup root, containerd in the namespace, images (first boot),
// the cluster intent (first boot, unless NoJoin), and the agent in the
// namespace. It returns when containerd's CRI is ready and the agent runs;
// wait for the node with WaitReady.
func (d *Device) Start() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("devnet: Start after Close")
	}
	if d.agent != nil {
		return fmt.Errorf("devnet: %s already running", d.nsName)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := d.ensureNetNSLocked(); err != nil {
		return err
	}
	if err := cgroups.MakeRoot(d.cgroup); err != nil {
		return err
	}
	if d.o.EveletCNI {
		if err := d.ensureCNIBinDir(); err != nil {
			return err
		}
	}
	if d.ctrd == nil {
		c, err := containerd.Start(ctx, d.ctrdOptions())
		if err != nil {
			return fmt.Errorf("devnet: %s: %w", d.nsName, err)
		}
		d.ctrd, d.ctrdSock = c, c.Socket()
	}
	if !d.imported && len(d.o.Images) > 0 {
		if err := d.ctrd.ImportImages(ctx, d.o.Images...); err != nil {
			return fmt.Errorf("devnet: %s: %w", d.nsName, err)
		}
	}
	d.imported = true
	if d.boots == 0 && !d.o.NoJoin {
		if _, ok := d.eve.Cluster(); !ok {
			c, err := d.Cluster(ctx)
			if err != nil {
				return fmt.Errorf("devnet: %s: cluster intent: %w", d.nsName, err)
			}
			if err := d.eve.SetCluster(c); err != nil {
				return err
			}
		}
	}
	if err := d.startAgentLocked(); err != nil {
		return err
	}
	d.boots++
	return nil
}

// ctrdOptions: containerd's root (content, snapshots, metadata) in
// persist, its state, runc root, socket and CNI IPAM in run, its CNI bridge
// and NAT inside the device's namespace.
func (d *Device) ctrdOptions() containerd.Options {
	o := containerd.Options{
		Dir:          filepath.Join(d.PersistDir(), "containerd"),
		RunDir:       filepath.Join(d.RunDir(), "containerd"),
		NetNS:        netnsPath(d.nsName),
		SandboxImage: images.PauseRef,
		PodCIDR:      d.podCIDR,
		BridgeName:   "cni0",
		// libcni's result cache (/var/lib/cni/results) is host-wide: a
		// network name per device keeps the devices' entries apart.
		NetworkName: d.cniNetwork(),
		// Test machines lack CAP_SYS_RESOURCE (environment.md).
		RestrictOOMScoreAdj: true,
	}
	if d.o.EveletCNI {
		o.CNIBinDir = d.cniBinDir()
	}
	return o
}

// cniBinDir is the runtime's CNI bin dir with EveletCNI: the agent
// installs evelet-cni and eve-ni into it.
func (d *Device) cniBinDir() string { return filepath.Join(d.PersistDir(), "cni-bin") }

// ensureCNIBinDir links the system's CNI plugins into cniBinDir.
func (d *Device) ensureCNIBinDir() error {
	dir := d.cniBinDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("devnet: %w", err)
	}
	sys, err := filepath.Glob("/usr/lib/cni/*")
	if err != nil || len(sys) == 0 {
		return fmt.Errorf("devnet: no CNI plugins in /usr/lib/cni (%v)", err)
	}
	for _, p := range sys {
		link := filepath.Join(dir, filepath.Base(p))
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(p, link); err != nil {
			return fmt.Errorf("devnet: %w", err)
		}
	}
	return nil
}

func (d *Device) cniNetwork() string { return d.nsName }

// sweepStale removes what a killed test run left under this device's
// names: processes in its namespace or cgroup root, the namespace, the
// veth, the cgroups. (Its old directory and mounts are unknown: they
// carry a random suffix.)
func (d *Device) sweepStale() error {
	o := owner{cgroupRoot: d.cgroup}
	if ino, err := netnsInode(netnsPath(d.nsName)); err == nil {
		o.netnsInos = []uint64{ino}
	}
	return errors.Join(o.killAll(30*time.Second), unplugDevice(d.hostVeth),
		deleteNetNS(d.nsName), cgroups.RemoveRoot(d.cgroup, 30*time.Second))
}

// ensureNetNSLocked creates the namespace and plugs it into the bridge,
// unless it is there.
func (d *Device) ensureNetNSLocked() error {
	if _, err := os.Stat(netnsPath(d.nsName)); err == nil && d.netnsIno != 0 {
		return nil
	}
	// A namespace of this name left by a killed run: empty it and start over.
	if ino, err := netnsInode(netnsPath(d.nsName)); err == nil {
		if err := (owner{netnsInos: []uint64{ino}}).killAll(30 * time.Second); err != nil {
			return err
		}
		deleteNetNS(d.nsName)
	}
	if err := createNetNS(d.nsName); err != nil {
		return err
	}
	if err := plugDevice(d.nsName, d.net.bridge, d.hostVeth, d.ip, d.net.hostIP); err != nil {
		deleteNetNS(d.nsName)
		return err
	}
	if d.cut {
		if err := setBridged(d.hostVeth, "", false); err != nil {
			return err
		}
	}
	ino, err := netnsInode(netnsPath(d.nsName))
	if err != nil {
		return fmt.Errorf("devnet: %w", err)
	}
	d.netnsIno = ino
	d.netnsInos = append(d.netnsInos, ino)
	return nil
}

// startAgentLocked runs `evelet agent` in the device's namespace (nsenter
// --net only: the kubelet's mounts must stay in the host mount namespace,
// where containerd and runc see them).
func (d *Device) startAgentLocked() error {
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return fmt.Errorf("devnet: %w", err)
	}
	f, err := os.OpenFile(d.AgentLogPath(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("devnet: %w", err)
	}
	fmt.Fprintf(f, "--- devnet: boot %d of %s at %s\n", d.boots+1, d.nsName, time.Now().Format(time.RFC3339Nano))
	args := append([]string{"--net=" + netnsPath(d.nsName), "--", d.o.Evelet, "agent",
		"--state-dir=" + d.StateDir(), "--run-dir=" + d.EveletRunDir(),
		"--eve-run=" + d.eve.Root.Run, "--eve-persist=" + d.eve.Root.Persist,
		"--containerd=" + d.ctrd.Endpoint(), "--kubelet-cgroup-root=" + d.cgroup,
		"--log-level=debug", "--drain-timeout=1m"}, d.o.AgentArgs...)
	if d.o.EveletCNI {
		args = append(args, "--cni-bin-dir="+d.cniBinDir(), "--cni-conf-dir="+d.ctrd.CNIConfDir())
	}
	if d.o.Command != nil {
		args = append([]string{"--net=" + netnsPath(d.nsName), "--"}, d.o.Command(CommandContext{
			Dir: d.dir, NodeName: d.node, IP: d.ip.IP.String(), CgroupRoot: d.cgroup, CRIEndpoint: d.ctrd.Endpoint(),
		})...)
	}
	cmd := exec.Command(nsenter, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	startedAt := time.Now()
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("devnet: starting the agent of %s: %w", d.nsName, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(done) }()
	d.agent, d.agentDone, d.agentAt = cmd, done, startedAt
	return nil
}

// Stop shuts the device down the orderly way: SIGTERM to the agent (it
// stops its kubelet; the node stays in the cluster), then containerd's
// Stop, which removes the pods through the CRI, then a sweep that kills
// whatever of the device still runs. Persist and run stay; the namespace
// stays. Start boots it again.
func (d *Device) Stop() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stopLocked()
}

func (d *Device) stopLocked() error {
	var errs []error
	if d.agent != nil {
		syscall.Kill(d.agent.Process.Pid, syscall.SIGTERM)
		select {
		case <-d.agentDone:
		case <-time.After(40 * time.Second):
			errs = append(errs, fmt.Errorf("devnet: agent of %s ignored SIGTERM for 40s", d.nsName))
			syscall.Kill(-d.agent.Process.Pid, syscall.SIGKILL)
			<-d.agentDone
		}
		d.agent, d.agentDone = nil, nil
	}
	if d.ctrd != nil {
		if err := d.ctrd.Stop(); err != nil {
			errs = append(errs, err)
		}
		d.ctrd = nil
	}
	if err := d.owner().killAll(30 * time.Second); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (d *Device) owner() owner {
	return owner{netnsInos: d.netnsInos, cgroupRoot: d.cgroup, ctrdSocket: d.ctrdSock}
}

// Reboot is a power cycle: every process of the device (agent, kubelet,
// containerd, shims, pod processes) is SIGKILLed with no chance to clean
// up; every mount under the device's directory goes, and so do the
// network namespace with the CNI bridge, NAT rules and pod namespaces, and
// the kubelet's cgroups; <run> is emptied, <persist> kept. EVE boots
// (optionally another release, see RebootOptions), zedagent publishes
// again, and the device starts as Start does.
func (d *Device) Reboot(o RebootOptions) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return errors.New("devnet: Reboot after Close")
	}
	err := d.powerOffLocked()
	if err == nil {
		// /run is lost first; then EVE boots and writes what its init and
		// baseosmgr put there (eve-release, ZbootStatus).
		err = os.RemoveAll(d.RunDir())
	}
	if err == nil {
		eo := evesim.Options{OSVersion: d.eve.OSVersion, OldEVE: d.eve.OldEVE}
		if o.OSVersion != "" {
			eo = evesim.Options{OSVersion: o.OSVersion, OldEVE: o.OldEVE}
		}
		err = d.eve.Reboot(eo)
	}
	if err == nil {
		err = d.eve.PublishZedagent()
	}
	d.mu.Unlock()
	if err != nil {
		return fmt.Errorf("devnet: rebooting %s: %w", d.nsName, err)
	}
	return d.Start()
}

// SetLink connects (true) or cuts (false) the device's link to the
// cluster: its host-side veth is attached to or detached from the bridge,
// so the device keeps its carrier and address but nothing it sends
// arrives (as when an uplink fails beyond the device). A cut holds across
// Reboot until SetLink(true).
func (d *Device) SetLink(up bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cut = !up
	if d.netnsIno == 0 {
		return nil // applied when the device next boots
	}
	return setBridged(d.hostVeth, d.net.bridge, up)
}

// powerOffLocked is the hard half of a reboot, also the last step of Close.
func (d *Device) powerOffLocked() error {
	var errs []error
	// The agent first: its kubelet dies with it (Pdeathsig) and no one
	// restarts containers while the sweep runs.
	if d.agent != nil {
		syscall.Kill(-d.agent.Process.Pid, syscall.SIGKILL)
		syscall.Kill(d.agent.Process.Pid, syscall.SIGKILL)
		<-d.agentDone
		d.agent, d.agentDone = nil, nil
	}
	if err := d.owner().killAll(30 * time.Second); err != nil {
		errs = append(errs, err)
	}
	if d.ctrd != nil {
		// Its process is dead; Stop only waits for it and closes its log.
		// Its forced cleanup finds the runc state in <run> and nothing
		// running, and leaves the namespace's CNI work to us.
		if err := d.ctrd.Stop(); err != nil {
			errs = append(errs, err)
		}
		d.ctrd = nil
	}
	if err := unmountUnder(d.dir); err != nil {
		errs = append(errs, err)
	}
	if err := unplugDevice(d.hostVeth); err != nil {
		errs = append(errs, err)
	}
	if err := deleteNetNS(d.nsName); err != nil {
		errs = append(errs, err)
	}
	d.netnsIno = 0
	if err := cgroups.RemoveRoot(d.cgroup, 30*time.Second); err != nil {
		errs = append(errs, err)
	}
	removeCNICache(d.cniNetwork())
	return errors.Join(errs...)
}

// Close stops the device orderly (Stop), then removes everything it had on
// the host: processes, mounts, the namespace and its veth, the cgroups,
// libcni cache entries, its Node object, its directory. Idempotent.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	errs := []error{d.stopLocked(), d.powerOffLocked()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.o.ControlPlane.Client().CoreV1().Nodes().Delete(ctx, d.node, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("devnet: deleting node %s: %w", d.node, err))
	}
	if err := errors.Join(errs...); err != nil {
		return err // keep the directory for a post-mortem
	}
	return os.RemoveAll(d.dir)
}

// Leftovers lists what of the device is still on the host: processes,
// mounts under its directory, its namespace, its veth, its cgroups,
// libcni cache entries of its network. Empty after Close.
func (d *Device) Leftovers() []string {
	var res []string
	d.mu.Lock()
	o := d.owner()
	d.mu.Unlock()
	if pids := o.pids(); len(pids) > 0 {
		res = append(res, "processes: "+describe(pids))
	}
	if m, err := containerd.Mounts(d.dir); err != nil || len(m) > 0 {
		res = append(res, fmt.Sprintf("mounts under %s: %v %v", d.dir, m, err))
	}
	if _, err := os.Stat(netnsPath(d.nsName)); err == nil {
		res = append(res, "netns "+d.nsName)
	}
	if _, err := netlink.LinkByName(d.hostVeth); err == nil {
		res = append(res, "link "+d.hostVeth)
	}
	if cg := cgroups.Existing(d.cgroup); len(cg) > 0 {
		res = append(res, "cgroups "+strings.Join(cg, " "))
	}
	ents, _ := os.ReadDir(cniCacheDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), d.cniNetwork()+"-") {
			res = append(res, "CNI cache entry "+filepath.Join(cniCacheDir, e.Name()))
		}
	}
	return res
}

// unmountUnder lazily unmounts everything under dir, deepest first, over a
// few passes (a mount may hide another).
func unmountUnder(dir string) error {
	var last []string
	for pass := 0; pass < 5; pass++ {
		m, err := containerd.Mounts(dir)
		if err != nil {
			return fmt.Errorf("devnet: %w", err)
		}
		if len(m) == 0 {
			return nil
		}
		last = m
		for _, mp := range m {
			if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL && err != syscall.ENOENT {
				return fmt.Errorf("devnet: unmount %s: %w", mp, err)
			}
		}
	}
	return fmt.Errorf("devnet: still mounted: %v", last)
}

// cniCacheDir is libcni's result cache, host-wide (containerd 1.6 does not
// let it be moved).
const cniCacheDir = "/var/lib/cni/results"

// removeCNICache drops the cache entries of a device's network, and the
// loopback entries of the same sandboxes: after a power cycle no
// attachment of them exists any more. Entries are named
// "<network>-<sandbox id>-<ifname>".
func removeCNICache(network string) {
	ents, _ := os.ReadDir(cniCacheDir)
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), network+"-")
		if !ok {
			continue
		}
		os.Remove(filepath.Join(cniCacheDir, e.Name()))
		if id, _, ok := strings.Cut(rest, "-"); ok {
			os.Remove(filepath.Join(cniCacheDir, "cni-loopback-"+id+"-lo"))
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
