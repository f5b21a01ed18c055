package vm

import (
	"os/exec"
	"strconv"
	"strings"

	"github.com/sirupsen/logrus"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri"
	"github.com/lf-edge/evelet/cri/vm/vmnet"
	"github.com/lf-edge/evelet/internal/layout"
	"github.com/lf-edge/evelet/internal/nodelabels"
)

// NodeConfig is what the agent gives the VM backend of its node: its own
// roots and endpoints, and the owner's knob. The agent starts the backend
// through Handlers and labels its Node with NodeLabels.
type NodeConfig struct {
	// StateDir and RunDir are the agent's roots; the backend keeps its
	// state in <StateDir>/vm, its CNI cache in <StateDir>/vm-net and pod
	// network namespaces in <RunDir>/netns.
	StateDir, RunDir string
	// ContainerdEndpoint is EVE's user containerd (images come through it).
	ContainerdEndpoint string
	// Self is the evelet binary; each VM runs under `Self vmm`.
	Self string
	// CNIConfDir and CNIBinDirs are the pod network's CNI configuration;
	// empty CNIConfDir: VM pods get a netns with loopback only.
	CNIConfDir string
	CNIBinDirs []string
	// KVMDevice is KVM's device ("": DefaultKVMDevice).
	KVMDevice string
	// AllowEmulation is the owner's evelet.policy.allow-vm-emulation now.
	AllowEmulation func() bool
	// OverlayMaxSize is the owner's evelet.policy.vm-overlay-max-size now.
	OverlayMaxSize func() int64
	Log            *logrus.Entry
}

func (c NodeConfig) kvmDevice() string {
	if c.KVMDevice == "" {
		return DefaultKVMDevice
	}
	return c.KVMDevice
}

// Handlers makes the VM backend for the CRI router. It fails soft: a
// device without QEMU still runs container pods, and the log says why VM
// pods are off (nil handlers then).
func Handlers(c NodeConfig, images runtimeapi.ImageServiceClient) (map[string]cri.Backend, func()) {
	log := c.Log
	var network Network
	netnsDir := layout.Run{Dir: c.RunDir}.Netns()
	if c.CNIConfDir != "" {
		n, err := vmnet.New(vmnet.Config{CNIConfDir: c.CNIConfDir, CNIBinDirs: c.CNIBinDirs,
			NetnsDir: netnsDir, CacheDir: layout.State{Dir: c.StateDir}.VMNet(), Log: log})
		if err != nil {
			log.WithError(err).Warn("VM pods are off")
			return nil, func() {}
		}
		network = n
	}
	var sup []string
	if c.Self != "" {
		sup = []string{c.Self, "vmm"}
	}
	b, err := New(Config{
		StateDir: layout.State{Dir: c.StateDir}.VM(), ContainerdSocket: strings.TrimPrefix(c.ContainerdEndpoint, "unix://"),
		Images: images, Network: network, NetnsDir: netnsDir, Supervisor: sup, KVMDevice: c.kvmDevice(),
		AllowEmulation: c.AllowEmulation, OverlayMaxSize: c.OverlayMaxSize, Log: log,
	})
	if err != nil {
		log.WithError(err).Warn("VM pods are off")
		return nil, func() {}
	}
	return map[string]cri.Backend{Handler: b}, func() { b.Close() }
}

// NodeLabels are the Node labels of a node that runs VM pods:
// nodelabels.VMRuntime (deploy/runtimeclass-eve-vm.yaml selects on it) and
// nodelabels.KVM (KVM or emulation); none without QEMU.
func NodeLabels(kvmDevice string) map[string]string {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return nil
	}
	if kvmDevice == "" {
		kvmDevice = DefaultKVMDevice
	}
	return map[string]string{nodelabels.VMRuntime: Handler, nodelabels.KVM: strconv.FormatBool(KVMUsable(kvmDevice))}
}
