package agent

import (
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri"
	"github.com/lf-edge/evelet/cri/vm"
	"github.com/lf-edge/evelet/internal/nodebin"
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

// vmHandlers starts the VM backend (cri/vm.Handlers) with this agent's
// roots and the owner's emulation knob.
func (a *Agent) vmHandlers(images runtimeapi.ImageServiceClient) (map[string]cri.Backend, func()) {
	if a.cfg.VM.Disabled {
		return nil, func() {}
	}
	return vm.Handlers(vm.NodeConfig{
		StateDir: a.cfg.StateDir, RunDir: a.cfg.RunDir, ContainerdEndpoint: a.cfg.ContainerdEndpoint, Self: nodebin.Path(a.cfg.Self, "vmm"),
		CNIConfDir: a.cfg.VM.CNIConfDir, CNIBinDirs: a.cfg.VM.CNIBinDirs, KVMDevice: a.cfg.VM.KVMDevice,
		AllowEmulation: func() bool { return a.policy().AllowVMEmulation },
		OverlayMaxSize: func() int64 { return a.policy().VMOverlayMax() },
		Log:            a.log.WithField("component", "vm"),
	}, images)
}

// Node labels of VM pods (cri/vm.NodeLabels).
const (
	LabelVMRuntime = nodelabels.VMRuntime
	LabelKVM       = nodelabels.KVM
)

func (a *Agent) vmLabels() map[string]string {
	if a.cfg.VM.Disabled {
		return nil
	}
	return vm.NodeLabels(a.cfg.VM.KVMDevice)
}
