package vm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/wait"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri/vm/vmm"
)

func (b *Backend) CreateContainer(ctx context.Context, req *runtimeapi.CreateContainerRequest, _ ...grpc.CallOption) (*runtimeapi.CreateContainerResponse, error) {
	sbID, cfg := req.GetPodSandboxId(), req.GetConfig()
	if cfg.GetMetadata() == nil {
		return nil, status.Error(codes.InvalidArgument, "container config has no metadata")
	}
	defer b.lock(sbID)()
	sb, err := b.store.sandbox(sbID)
	if err != nil {
		return nil, lookupErr("pod sandbox", sbID, err)
	}
	if !sb.Ready {
		return nil, status.Errorf(codes.FailedPrecondition, "pod sandbox %s is not ready", sbID)
	}
	// One VM per pod: a second container (another name, or the same one
	// while it still runs) is refused.
	others, err := b.sandboxContainers(sbID)
	if err != nil {
		return nil, err
	}
	for _, o := range others {
		if o.Metadata.GetName() == cfg.GetMetadata().GetName() && o.Metadata.GetAttempt() == cfg.GetMetadata().GetAttempt() {
			// A retried CreateContainer: the name is taken, as in containerd.
			return nil, status.Errorf(codes.AlreadyExists, "container name %q (attempt %d) is reserved for %s",
				o.Metadata.GetName(), o.Metadata.GetAttempt(), o.ID)
		}
		if o.Metadata.GetName() != cfg.GetMetadata().GetName() {
			return nil, status.Errorf(codes.InvalidArgument,
				"a VM pod (RuntimeClass handler %s) runs exactly one container; this pod already has container %q, so %q is refused (init containers and sidecars are not supported)",
				Handler, o.Metadata.GetName(), cfg.GetMetadata().GetName())
		}
		if b.running(o) {
			return nil, status.Errorf(codes.FailedPrecondition, "the VM of container %q still runs", o.Metadata.GetName())
		}
	}
	if len(cfg.GetDevices()) > 0 || len(cfg.GetCDIDevices()) > 0 {
		return nil, status.Error(codes.InvalidArgument, "a VM pod gets no host device nodes; PCI and USB adapters come through a ResourceClaim (docs/devices.md)")
	}
	pass, err := passthroughOf(cfg, b.cfg.sysfs())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	accel, err := b.accel()
	if err != nil {
		return nil, err
	}
	vcpus, memMiB, err := sizeGuest(cfg.GetLinux().GetResources())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	ref := cfg.GetImage().GetImage()
	// The disk must not be pruned before the container that uses it is saved.
	b.diskUse.RLock()
	defer b.diskUse.RUnlock()
	cache, err := b.resolveDisk(ctx, ref)
	if err != nil {
		if status.Code(err) == codes.NotFound {
			return nil, err
		}
		return nil, status.Errorf(codes.Unknown, "VM disk: %v", err)
	}
	image := cfg.GetImage().GetUserSpecifiedImage()
	if image == "" {
		image = ref
	}
	boot, err := bootFromDir(ctx, b.cfg.QEMUImg, cache, image)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	r := cfg.GetLinux().GetResources()
	c := &containerState{
		ID: newID(), SandboxID: sbID, Metadata: cfg.GetMetadata(), Image: cfg.GetImage(), ImageRef: ref,
		Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations(), CreatedAt: time.Now().UnixNano(),
		Boot: boot, VCPUs: vcpus, MemoryMiB: memMiB, Accel: accel,
		MemoryLimit: cgroupMemoryLimit(r), CPUQuota: r.GetCpuQuota(), CPUPeriod: r.GetCpuPeriod(), CPUShares: r.GetCpuShares(),
		OverlayMax:  b.cfg.OverlayMaxSize(),
		Passthrough: pass,
	}
	if sb.LogDirectory != "" && cfg.GetLogPath() != "" {
		c.LogPath = filepath.Join(sb.LogDirectory, cfg.GetLogPath())
	}
	c.Cgroup = containerCgroup(sb.CgroupParent, c.ID)
	dir := b.store.containerDir(c.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, status.Errorf(codes.Internal, "container directory: %v", err)
	}
	if boot.Disk != "" {
		if err := createOverlay(ctx, b.cfg.QEMUImg, boot, filepath.Join(dir, overlayFile)); err != nil {
			os.RemoveAll(dir)
			return nil, status.Error(codes.Unknown, err.Error())
		}
	}
	if err := b.store.saveContainer(c); err != nil {
		os.RemoveAll(dir)
		return nil, status.Errorf(codes.Internal, "saving container: %v", err)
	}
	b.log.WithFields(map[string]any{"container": c.ID, "sandbox": sbID, "vcpus": vcpus, "memoryMiB": memMiB, "accel": accel}).Info("VM container created")
	return &runtimeapi.CreateContainerResponse{ContainerId: c.ID}, nil
}

// accel picks KVM when the device has it, else TCG if the owner allows it.
func (b *Backend) accel() (string, error) {
	if KVMUsable(b.cfg.KVMDevice) {
		return "kvm", nil
	}
	if b.cfg.AllowEmulation() {
		return "tcg", nil
	}
	return "", status.Errorf(codes.FailedPrecondition,
		"this device has no KVM (%s) and its owner does not allow VM emulation (config item evelet.policy.allow-vm-emulation=true would run the VM under QEMU's slow software emulation)",
		b.cfg.KVMDevice)
}

// KVMUsable says whether KVM can run a guest: a /dev/kvm node alone is not
// enough (it exists on hosts whose CPU lacks VMX/SVM, where KVM_CREATE_VM
// fails), and neither is a VM KVM agreed to create: on the 2-core test VMs
// KVM_CREATE_VM succeeds without VMX/SVM in the CPU flags, and a real guest
// then dies in its firmware with "KVM internal error ... emulation failure".
func KVMUsable(dev string) bool {
	if !cpuVirtFlags("/proc/cpuinfo") {
		return false
	}
	f, err := os.OpenFile(dev, os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	const kvmCreateVM = 0xAE01 // _IO(KVMIO, 0x01)
	fd, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmCreateVM, 0)
	if errno != 0 {
		return false
	}
	syscall.Close(int(fd))
	return true
}

func (b *Backend) StartContainer(ctx context.Context, req *runtimeapi.StartContainerRequest, _ ...grpc.CallOption) (*runtimeapi.StartContainerResponse, error) {
	id := req.GetContainerId()
	defer b.lock(id)()
	c, err := b.store.container(id)
	if err != nil {
		return nil, lookupErr("container", id, err)
	}
	if c.StartedAt != 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "container %s was already started", id)
	}
	sb, err := b.store.sandbox(c.SandboxID)
	if err != nil {
		return nil, lookupErr("pod sandbox", c.SandboxID, err)
	}
	dir := b.store.containerDir(id)
	cgroups, err := makeCgroups(c.Cgroup, c)
	if err != nil {
		return nil, status.Errorf(codes.Unknown, "VM cgroup: %v", err)
	}
	var nics []NIC
	if sb.Net != nil {
		nics = sb.Net.NICs
	}
	if err := b.giveUID(c); err != nil {
		return nil, status.Errorf(codes.ResourceExhausted, "VM uid: %v", err)
	}
	spec := vmm.Spec{QEMU: b.cfg.QEMU, Args: qemuArgs(c, dir, nics), Netns: sb.Netns, Cgroups: cgroups, LogPath: c.LogPath, Net: sb.Net,
		UID: c.UID, GID: c.UID, Monitor: filepath.Join(dir, vmm.MonitorSocket), MaxFileSize: c.OverlayMax}
	if err := vmm.WriteJSON(filepath.Join(dir, vmm.SpecFile), &spec); err != nil {
		return nil, status.Errorf(codes.Internal, "writing VM spec: %v", err)
	}
	b.starting.Store(id, struct{}{})
	defer b.starting.Delete(id)
	c.StartedAt = time.Now().UnixNano()
	if err := b.store.saveContainer(c); err != nil {
		return nil, status.Errorf(codes.Internal, "saving container: %v", err)
	}
	if err := b.spawn(dir); err != nil {
		vmm.WriteJSON(filepath.Join(dir, vmm.ExitFile), &vmm.Exit{ExitCode: 128, FinishedAt: time.Now().UnixNano(), Reason: "StartError", Message: err.Error()})
		return nil, status.Errorf(codes.Unknown, "starting the VM supervisor: %v", err)
	}
	// Wait until QEMU runs (its sockets exist) or has already failed.
	var exit *vmm.Exit
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, startTimeout, true, func(context.Context) (bool, error) {
		if e, _ := b.store.exit(id); e != nil {
			exit = e
			return true, nil
		}
		_, err := os.Stat(filepath.Join(dir, vmm.StartedFile))
		return err == nil, nil
	})
	if _, serr := os.Stat(filepath.Join(dir, vmm.StartedFile)); exit != nil && serr != nil {
		return nil, status.Errorf(codes.Unknown, "starting the VM: %s", exit.Message)
	}
	if err != nil {
		return nil, status.Errorf(codes.DeadlineExceeded, "the VM did not start within %v (see %s)", startTimeout, filepath.Join(dir, vmm.LogFile))
	}
	b.log.WithField("container", id).Info("VM started")
	return &runtimeapi.StartContainerResponse{}, nil
}

// spawn starts the supervisor in its own session, so that it survives the
// shim and the agent; the shim only reaps it if it exits while we run.
func (b *Backend) spawn(dir string) error {
	logf, err := os.OpenFile(filepath.Join(dir, vmm.LogFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := append(append([]string{}, b.cfg.Supervisor[1:]...), dir)
	cmd := exec.Command(b.cfg.Supervisor[0], args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait()
	// The pid is known now: whoever looks (a restarted agent too) finds the
	// supervisor from here on, before it has written the file itself.
	if err := vmm.WritePID(filepath.Join(dir, vmm.PIDFile), cmd.Process.Pid); err != nil {
		cmd.Process.Kill()
		return fmt.Errorf("recording the supervisor's pid: %w", err)
	}
	return nil
}

// running says whether the container's VM runs now.
func (b *Backend) running(c *containerState) bool {
	if c.StartedAt == 0 {
		return false
	}
	dir := b.store.containerDir(c.ID)
	if e, _ := b.store.exit(c.ID); e != nil {
		return false
	}
	return vmm.ProcessAlive(vmm.ReadPID(filepath.Join(dir, vmm.PIDFile)), dir)
}

func (b *Backend) StopContainer(ctx context.Context, req *runtimeapi.StopContainerRequest, _ ...grpc.CallOption) (*runtimeapi.StopContainerResponse, error) {
	id := req.GetContainerId()
	c, err := b.store.container(id)
	if err != nil {
		return nil, lookupErr("container", id, err)
	}
	if err := b.stopContainer(ctx, c, time.Duration(req.GetTimeout())*time.Second); err != nil {
		return nil, err
	}
	return &runtimeapi.StopContainerResponse{}, nil
}

// stopContainer asks the guest to power off (ACPI, over QMP) and kills QEMU
// once timeout has passed; it returns when the exit is recorded.
func (b *Backend) stopContainer(ctx context.Context, c *containerState, timeout time.Duration) error {
	defer b.lock(c.ID)()
	if !b.running(c) {
		b.recordLost(c)
		return nil
	}
	dir := b.store.containerDir(c.ID)
	exited := func(context.Context) (bool, error) { return !b.running(c), nil }
	if timeout > 0 {
		if err := powerdown(filepath.Join(dir, qmpSocket)); err != nil {
			b.log.WithError(err).WithField("container", c.ID).Warn("ACPI powerdown over QMP failed; killing QEMU")
		} else if wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, exited) == nil {
			return nil
		}
	}
	if pid := vmm.ReadPID(filepath.Join(dir, vmm.QEMUPIDFile)); vmm.ProcessAlive(pid, dir) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, exited); err != nil {
		// The supervisor does not record the exit; take it down too.
		if pid := vmm.ReadPID(filepath.Join(dir, vmm.PIDFile)); vmm.ProcessAlive(pid, dir) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		b.recordLost(c)
	}
	return nil
}

// recordLost writes an exit record for a started VM whose supervisor is
// gone without one (killed, or the host rebooted).
func (b *Backend) recordLost(c *containerState) {
	if c.StartedAt == 0 {
		return
	}
	if _, ok := b.starting.Load(c.ID); ok {
		return
	}
	if e, _ := b.store.exit(c.ID); e != nil {
		return
	}
	dir := b.store.containerDir(c.ID)
	if vmm.ProcessAlive(vmm.ReadPID(filepath.Join(dir, vmm.PIDFile)), dir) {
		return
	}
	// QEMU lost its parent-death signal when it dropped root (the kernel
	// clears it on a uid change): a QEMU whose supervisor is gone is
	// killed here, as nobody would record its exit.
	if pid := vmm.ReadPID(filepath.Join(dir, vmm.QEMUPIDFile)); vmm.ProcessAlive(pid, dir) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	vmm.WriteJSON(filepath.Join(dir, vmm.ExitFile), &vmm.Exit{ExitCode: 137, FinishedAt: time.Now().UnixNano(), Reason: "Error",
		Message: "the VM's supervisor is gone (killed, or the device restarted)"})
}

// powerdown presses the guest's ACPI power button.
func powerdown(sock string) error {
	m, err := qmp.NewSocketMonitor("unix", sock, 2*time.Second)
	if err != nil {
		return err
	}
	if err := m.Connect(); err != nil {
		return err
	}
	defer m.Disconnect()
	_, err = m.Run([]byte(`{"execute":"system_powerdown"}`))
	return err
}

func (b *Backend) RemoveContainer(ctx context.Context, req *runtimeapi.RemoveContainerRequest, _ ...grpc.CallOption) (*runtimeapi.RemoveContainerResponse, error) {
	id := req.GetContainerId()
	if _, err := b.store.container(id); err != nil {
		return nil, lookupErr("container", id, err)
	}
	if err := b.removeContainer(ctx, id); err != nil {
		return nil, err
	}
	return &runtimeapi.RemoveContainerResponse{}, nil
}

// removeContainer kills the VM if it runs and removes everything of it: its
// cgroup, its directory (overlay, sockets, state) and its log.
func (b *Backend) removeContainer(ctx context.Context, id string) error {
	c, err := b.store.container(id)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return lookupErr("container", id, err)
	}
	if err := b.stopContainer(ctx, c, 0); err != nil {
		return err
	}
	defer b.lock(id)()
	if err := removeCgroups(c.Cgroup); err != nil {
		return status.Errorf(codes.Unknown, "removing the VM's cgroup: %v", err)
	}
	if c.LogPath != "" {
		os.Remove(c.LogPath)
	}
	if err := os.RemoveAll(b.store.containerDir(id)); err != nil {
		return status.Errorf(codes.Internal, "removing container: %v", err)
	}
	// Its image may have been removed while it still used the disk.
	go b.pruneDisksLogged(ctx)
	return nil
}

func (b *Backend) ContainerStatus(ctx context.Context, req *runtimeapi.ContainerStatusRequest, _ ...grpc.CallOption) (*runtimeapi.ContainerStatusResponse, error) {
	id := req.GetContainerId()
	c, err := b.store.container(id)
	if err != nil {
		return nil, lookupErr("container", id, err)
	}
	st := &runtimeapi.ContainerStatus{
		Id: c.ID, Metadata: c.Metadata, CreatedAt: c.CreatedAt, StartedAt: c.StartedAt,
		Image: c.Image, ImageRef: c.ImageRef, Labels: c.Labels, Annotations: c.Annotations, LogPath: c.LogPath,
		State: runtimeapi.ContainerState_CONTAINER_CREATED,
	}
	if c.Image != nil {
		st.ImageId = c.ImageRef
	}
	if c.StartedAt != 0 {
		st.State = runtimeapi.ContainerState_CONTAINER_RUNNING
		if !b.running(c) {
			b.recordLost(c)
			if e, _ := b.store.exit(c.ID); e != nil {
				st.State = runtimeapi.ContainerState_CONTAINER_EXITED
				st.ExitCode, st.FinishedAt, st.Reason, st.Message = e.ExitCode, e.FinishedAt, e.Reason, e.Message
			}
		}
	}
	if c.VCPUs > 0 {
		st.Resources = &runtimeapi.ContainerResources{Linux: &runtimeapi.LinuxContainerResources{
			MemoryLimitInBytes: c.MemoryLimit, CpuQuota: c.CPUQuota, CpuPeriod: c.CPUPeriod, CpuShares: c.CPUShares}}
	}
	return &runtimeapi.ContainerStatusResponse{Status: st}, nil
}

func (b *Backend) containerState(c *containerState) runtimeapi.ContainerState {
	if c.StartedAt == 0 {
		return runtimeapi.ContainerState_CONTAINER_CREATED
	}
	if b.running(c) {
		return runtimeapi.ContainerState_CONTAINER_RUNNING
	}
	return runtimeapi.ContainerState_CONTAINER_EXITED
}

func (b *Backend) ListContainers(ctx context.Context, req *runtimeapi.ListContainersRequest, _ ...grpc.CallOption) (*runtimeapi.ListContainersResponse, error) {
	all, err := b.store.containers()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "listing VM containers: %v", err)
	}
	f := req.GetFilter()
	var out []*runtimeapi.Container
	for _, c := range all {
		state := b.containerState(c)
		if f.GetId() != "" && f.GetId() != c.ID ||
			f.GetPodSandboxId() != "" && f.GetPodSandboxId() != c.SandboxID ||
			f.GetState() != nil && f.GetState().GetState() != state ||
			!matchLabels(c.Labels, f.GetLabelSelector()) {
			continue
		}
		out = append(out, &runtimeapi.Container{Id: c.ID, PodSandboxId: c.SandboxID, Metadata: c.Metadata, Image: c.Image,
			ImageRef: c.ImageRef, ImageId: c.ImageRef, State: state, CreatedAt: c.CreatedAt, Labels: c.Labels, Annotations: c.Annotations})
	}
	return &runtimeapi.ListContainersResponse{Containers: out}, nil
}

func (b *Backend) UpdateContainerResources(ctx context.Context, req *runtimeapi.UpdateContainerResourcesRequest, _ ...grpc.CallOption) (*runtimeapi.UpdateContainerResourcesResponse, error) {
	if _, err := b.store.container(req.GetContainerId()); err != nil {
		return nil, lookupErr("container", req.GetContainerId(), err)
	}
	return nil, unsupported("changing a running VM's resources")
}

// ReopenContainerLog asks the supervisor to reopen the log (after the
// kubelet rotated it).
func (b *Backend) ReopenContainerLog(ctx context.Context, req *runtimeapi.ReopenContainerLogRequest, _ ...grpc.CallOption) (*runtimeapi.ReopenContainerLogResponse, error) {
	id := req.GetContainerId()
	c, err := b.store.container(id)
	if err != nil {
		return nil, lookupErr("container", id, err)
	}
	if !b.running(c) {
		return nil, status.Errorf(codes.FailedPrecondition, "container %s is not running", id)
	}
	dir := b.store.containerDir(id)
	if err := syscall.Kill(vmm.ReadPID(filepath.Join(dir, vmm.PIDFile)), syscall.SIGUSR1); err != nil {
		return nil, status.Errorf(codes.Unknown, "signalling the VM supervisor: %v", err)
	}
	return &runtimeapi.ReopenContainerLogResponse{}, nil
}

func (b *Backend) CheckpointContainer(ctx context.Context, req *runtimeapi.CheckpointContainerRequest, _ ...grpc.CallOption) (*runtimeapi.CheckpointContainerResponse, error) {
	return nil, unsupported("checkpoints")
}

// cpuVirtFlags reports whether the CPU offers hardware virtualisation
// (x86: the vmx or svm flag). Other architectures are not checked here.
func cpuVirtFlags(cpuinfo string) bool {
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "386" {
		return true
	}
	b, err := os.ReadFile(cpuinfo)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(k) != "flags" {
			continue
		}
		for _, f := range strings.Fields(v) {
			if f == "vmx" || f == "svm" {
				return true
			}
		}
		return false
	}
	return false
}
