package vm

import (
	"context"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Stats come from the VM's cgroup (cpuacct and memory, cgroup v1), which
// holds QEMU and its supervisor: what the guest uses plus QEMU's overhead,
// which is what the device pays.

func (b *Backend) containerStats(c *containerState) *runtimeapi.ContainerStats {
	now := time.Now().UnixNano()
	st := &runtimeapi.ContainerStats{Attributes: &runtimeapi.ContainerAttributes{
		Id: c.ID, Metadata: c.Metadata, Labels: c.Labels, Annotations: c.Annotations}}
	st.WritableLayer = b.writableLayer(c, now)
	if c.Cgroup == "" || !b.running(c) {
		return st
	}
	if v, ok := cgroupValue(c.Cgroup, "cpuacct", "cpuacct.usage"); ok {
		st.Cpu = &runtimeapi.CpuUsage{Timestamp: now, UsageCoreNanoSeconds: &runtimeapi.UInt64Value{Value: v}}
	}
	if usage, ok := cgroupValue(c.Cgroup, "memory", "memory.usage_in_bytes"); ok {
		ws := usage
		if inactive, ok := memoryStat(c.Cgroup, "total_inactive_file"); ok && inactive < ws {
			ws -= inactive
		}
		st.Memory = &runtimeapi.MemoryUsage{Timestamp: now, WorkingSetBytes: &runtimeapi.UInt64Value{Value: ws},
			UsageBytes: &runtimeapi.UInt64Value{Value: usage}}
		if rss, ok := memoryStat(c.Cgroup, "total_rss"); ok {
			st.Memory.RssBytes = &runtimeapi.UInt64Value{Value: rss}
		}
	}
	return st
}

func (b *Backend) ContainerStats(ctx context.Context, req *runtimeapi.ContainerStatsRequest, _ ...grpc.CallOption) (*runtimeapi.ContainerStatsResponse, error) {
	c, err := b.store.container(req.GetContainerId())
	if err != nil {
		return nil, lookupErr("container", req.GetContainerId(), err)
	}
	return &runtimeapi.ContainerStatsResponse{Stats: b.containerStats(c)}, nil
}

func (b *Backend) ListContainerStats(ctx context.Context, req *runtimeapi.ListContainerStatsRequest, _ ...grpc.CallOption) (*runtimeapi.ListContainerStatsResponse, error) {
	all, err := b.store.containers()
	if err != nil {
		return nil, lookupErr("containers", "", err)
	}
	f := req.GetFilter()
	var out []*runtimeapi.ContainerStats
	for _, c := range all {
		if f.GetId() != "" && f.GetId() != c.ID || f.GetPodSandboxId() != "" && f.GetPodSandboxId() != c.SandboxID ||
			!matchLabels(c.Labels, f.GetLabelSelector()) || !b.running(c) {
			continue
		}
		out = append(out, b.containerStats(c))
	}
	return &runtimeapi.ListContainerStatsResponse{Stats: out}, nil
}

func (b *Backend) sandboxStats(sb *sandboxState) *runtimeapi.PodSandboxStats {
	st := &runtimeapi.PodSandboxStats{
		Attributes: &runtimeapi.PodSandboxAttributes{Id: sb.ID, Metadata: sb.Metadata, Labels: sb.Labels, Annotations: sb.Annotations},
		Linux:      &runtimeapi.LinuxPodSandboxStats{},
	}
	cs, _ := b.sandboxContainers(sb.ID)
	var cpu, mem uint64
	now := time.Now().UnixNano()
	for _, c := range cs {
		cst := b.containerStats(c)
		if cst.Cpu == nil && cst.Memory == nil {
			continue
		}
		st.Linux.Containers = append(st.Linux.Containers, cst)
		cpu += cst.GetCpu().GetUsageCoreNanoSeconds().GetValue()
		mem += cst.GetMemory().GetWorkingSetBytes().GetValue()
	}
	st.Linux.Cpu = &runtimeapi.CpuUsage{Timestamp: now, UsageCoreNanoSeconds: &runtimeapi.UInt64Value{Value: cpu}}
	st.Linux.Memory = &runtimeapi.MemoryUsage{Timestamp: now, WorkingSetBytes: &runtimeapi.UInt64Value{Value: mem}}
	return st
}

func (b *Backend) PodSandboxStats(ctx context.Context, req *runtimeapi.PodSandboxStatsRequest, _ ...grpc.CallOption) (*runtimeapi.PodSandboxStatsResponse, error) {
	sb, err := b.store.sandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, lookupErr("pod sandbox", req.GetPodSandboxId(), err)
	}
	return &runtimeapi.PodSandboxStatsResponse{Stats: b.sandboxStats(sb)}, nil
}

func (b *Backend) ListPodSandboxStats(ctx context.Context, req *runtimeapi.ListPodSandboxStatsRequest, _ ...grpc.CallOption) (*runtimeapi.ListPodSandboxStatsResponse, error) {
	sbs, err := b.store.sandboxes()
	if err != nil {
		return nil, lookupErr("pod sandboxes", "", err)
	}
	f := req.GetFilter()
	var out []*runtimeapi.PodSandboxStats
	for _, sb := range sbs {
		if f.GetId() != "" && f.GetId() != sb.ID || !matchLabels(sb.Labels, f.GetLabelSelector()) || b.sandboxState(sb) != runtimeapi.PodSandboxState_SANDBOX_READY {
			continue
		}
		out = append(out, b.sandboxStats(sb))
	}
	return &runtimeapi.ListPodSandboxStatsResponse{Stats: out}, nil
}

// writableLayer is the container's overlay, what the guest wrote: the
// kubelet counts it as the container's rootfs in the pod's ephemeral
// storage, so an ephemeral-storage limit evicts a guest that writes past
// it. Allocated blocks, not the file's size: a qcow2 grows by clusters and
// discards (discard=unmap) punch holes.
func (b *Backend) writableLayer(c *containerState, now int64) *runtimeapi.FilesystemUsage {
	var used uint64
	var fi syscall.Stat_t
	if err := syscall.Stat(filepath.Join(b.store.containerDir(c.ID), overlayFile), &fi); err == nil {
		used = uint64(fi.Blocks) * 512
	}
	return &runtimeapi.FilesystemUsage{Timestamp: now, UsedBytes: &runtimeapi.UInt64Value{Value: used}, InodesUsed: &runtimeapi.UInt64Value{Value: 1}}
}
