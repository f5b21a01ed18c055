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
	// QEMUOverheadMiB is the memory QEMU and the supervisor take beyond the
	// guest's RAM; it comes out of the container's memory limit, because
	// they all run in the container's cgroup. Measured with TCG
	// (docs/vm-pods.md, "Resources").
	QEMUOverheadMiB = 96
)

// sizeGuest gives the guest's vCPUs and RAM: CPU limit rounded up to whole
// vCPUs, memory limit minus QEMU's overhead.
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
		min := int64(MinGuestMemoryMiB+QEMUOverheadMiB) * mib
		if l < min {
			return 0, 0, fmt.Errorf("memory limit %dMi is below the minimum for a VM pod, %dMi (%dMi guest RAM + %dMi for QEMU)",
				l/mib, min/mib, MinGuestMemoryMiB, QEMUOverheadMiB)
		}
		memMiB = int(l/mib) - QEMUOverheadMiB
		memMiB &^= 1 // QEMU rounds to 2 MiB on x86 anyway
	}
	return vcpus, memMiB, nil
}
