package agent

import (
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri"
	"github.com/lf-edge/evelet/cri/vm"
	"github.com/lf-edge/evelet/cri/vm/vmnet"
	"github.com/lf-edge/evelet/internal/nodelabels"
)

// VMConfig configures VM pods (RuntimeClass handler eve-vm, cri/vm).
type VMConfig struct {
	// Disabled turns VM pods off: their handler then goes to containerd,
	// which refuses it.
	Disabled bool
	// CNIConfDir and CNIBinDirs are the pod network's CNI configuration,
	// the same as containerd's, so VM pods join the same network. Empty
	// CNIConfDir: VM pods get a netns with loopback only.
	CNIConfDir string
	CNIBinDirs []string
	// KVMDevice is KVM's device ("": /dev/kvm). A path that does not exist
	// turns KVM off: VM pods then need the owner's allow-vm-emulation.
	KVMDevice string
}

func (c VMConfig) kvmDevice() string {
	if c.KVMDevice == "" {
		return vm.DefaultKVMDevice
	}
	return c.KVMDevice
}

// vmHandlers makes the VM backend for the CRI router. It fails soft: a
// device without QEMU still runs container pods, and the agent logs why VM
// pods are off.
func (a *Agent) vmHandlers(images runtimeapi.ImageServiceClient) (map[string]cri.Backend, func()) {
	if a.cfg.VM.Disabled {
		return nil, func() {}
	}
	log := a.log.WithField("component", "vm")
	var network vm.Network
	netnsDir := filepath.Join(a.cfg.RunDir, "netns")
	if a.cfg.VM.CNIConfDir != "" {
		n, err := vmnet.New(vmnet.Config{CNIConfDir: a.cfg.VM.CNIConfDir, CNIBinDirs: a.cfg.VM.CNIBinDirs,
			NetnsDir: netnsDir, CacheDir: filepath.Join(a.cfg.StateDir, "vm-net"), Log: log})
		if err != nil {
			log.WithError(err).Warn("VM pods are off")
			return nil, func() {}
		}
		network = n
	}
	var sup []string
	if a.cfg.Self != "" {
		sup = []string{a.cfg.Self, "vmm"}
	}
	b, err := vm.New(vm.Config{
		StateDir: filepath.Join(a.cfg.StateDir, "vm"), ContainerdSocket: strings.TrimPrefix(a.cfg.ContainerdEndpoint, "unix://"),
		Images: images, Network: network, NetnsDir: netnsDir, Supervisor: sup, KVMDevice: a.cfg.VM.kvmDevice(),
		AllowEmulation: func() bool { return a.policy().AllowVMEmulation }, Log: log,
	})
	if err != nil {
		log.WithError(err).Warn("VM pods are off")
		return nil, func() {}
	}
	return map[string]cri.Backend{vm.Handler: b}, func() { b.Close() }
}

// Node labels of VM pods: LabelVMRuntime only evelet nodes that run VM pods
// carry (deploy/runtimeclass-eve-vm.yaml selects on it), LabelKVM says
// whether they run with KVM or need emulation.
const (
	LabelVMRuntime = nodelabels.VMRuntime
	LabelKVM       = nodelabels.KVM
)

func (a *Agent) vmLabels() map[string]string {
	if a.cfg.VM.Disabled {
		return nil
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return nil
	}
	return map[string]string{LabelVMRuntime: vm.Handler, LabelKVM: strconv.FormatBool(vm.KVMUsable(a.cfg.VM.kvmDevice()))}
}
