package vm

import (
	"fmt"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Sizing of a guest from the container's resources (docs/vm-pods.md).
const (
	mib = 1 << 20
	// DefaultVCPUs is a guest's vCPU count without a CPU limit.
	DefaultVCPUs = 1
	// MaxVCPUs bounds what a CPU limit can ask for.
	MaxVCPUs = 16
	// DefaultGuestMemoryMiB is a guest's RAM without a memory limit.
	DefaultGuestMemoryMiB = 256
	// MinGuestMemoryMiB is the smallest guest RAM accepted.
	MinGuestMemoryMiB = 64
	// QEMUOverheadMiB is the memory QEMU and the supervisor take beyond
	// the guest's RAM: the VM's cgroup limit is the container's memory limit
	// plus this, and deploy/runtimeclass-eve-vm.yaml declares it as the pod
	// overhead so that the kubelet's pod cgroup and the scheduler count it.
	// Measured with TCG (docs/vm-pods.md, "Resources").
	QEMUOverheadMiB = 96
)

// sizeGuest gives the guest's vCPUs and RAM: the CPU limit rounded up to
// whole vCPUs, the memory limit as guest RAM (QEMU's overhead comes on top,
// as the pod overhead of the RuntimeClass).
func sizeGuest(r *runtimeapi.LinuxContainerResources) (vcpus, memMiB int, err error) {
	vcpus = DefaultVCPUs
	if q, p := r.GetCpuQuota(), r.GetCpuPeriod(); q > 0 && p > 0 {
		vcpus = int((q + p - 1) / p)
	}
	if vcpus > MaxVCPUs {
		return 0, 0, fmt.Errorf("CPU limit asks for %d vCPUs; a VM pod gets at most %d", vcpus, MaxVCPUs)
	}
	memMiB = DefaultGuestMemoryMiB
	if l := r.GetMemoryLimitInBytes(); l > 0 {
		if l < MinGuestMemoryMiB*mib {
			return 0, 0, fmt.Errorf("memory limit %dMi is below the minimum guest RAM of a VM pod, %dMi", l/mib, MinGuestMemoryMiB)
		}
		memMiB = int(l / mib)
	}
	return vcpus, memMiB, nil
}

// cgroupMemoryLimit is the VM cgroup's limit: guest RAM plus QEMU's
// overhead; 0 (none) without a container limit.
func cgroupMemoryLimit(r *runtimeapi.LinuxContainerResources) int64 {
	if l := r.GetMemoryLimitInBytes(); l > 0 {
		return l + QEMUOverheadMiB*mib
	}
	return 0
}
