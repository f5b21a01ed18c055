package vm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri/vm/stream"
	"github.com/lf-edge/evelet/cri/vm/vmnet"
)

func (b *Backend) RunPodSandbox(ctx context.Context, req *runtimeapi.RunPodSandboxRequest, _ ...grpc.CallOption) (*runtimeapi.RunPodSandboxResponse, error) {
	cfg := req.GetConfig()
	if cfg.GetMetadata() == nil {
		return nil, status.Error(codes.InvalidArgument, "pod sandbox config has no metadata")
	}
	ns := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions()
	if ns.GetNetwork() == runtimeapi.NamespaceMode_NODE || ns.GetPid() == runtimeapi.NamespaceMode_NODE || ns.GetIpc() == runtimeapi.NamespaceMode_NODE {
		return nil, status.Errorf(codes.InvalidArgument, "evelet guardrail %q: a VM pod cannot share the host's network, PID or IPC namespace (hostNetwork, hostPID, hostIPC): the guest has its own kernel", RuleVMHostNamespaces)
	}
	if err := checkOverhead(cfg.GetLinux()); err != nil {
		return nil, err
	}
	if err := checkConfinement(cfg.GetLinux().GetCgroupParent()); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "VM pods cannot run on this device: %v", err)
	}
	id := newID()
	release, err := b.reserveSandboxName(cfg.GetMetadata(), id)
	if err != nil {
		return nil, err
	}
	defer release()
	defer b.lock(id)()
	sb := &sandboxState{
		ID: id, Metadata: cfg.GetMetadata(), Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations(),
		RuntimeHandler: req.GetRuntimeHandler(), CreatedAt: time.Now().UnixNano(),
		LogDirectory: cfg.GetLogDirectory(), CgroupParent: cfg.GetLinux().GetCgroupParent(),
	}
	// Written before the network exists, so that a crash in between leaves
	// a NOTREADY sandbox the kubelet removes (and Teardown cleans) rather
	// than a netns nobody knows of.
	if err := b.store.saveSandbox(sb); err != nil {
		return nil, status.Errorf(codes.Internal, "saving sandbox: %v", err)
	}
	md := cfg.GetMetadata()
	pod := PodMeta{Namespace: md.GetNamespace(), Name: md.GetName(), UID: md.GetUid(), Annotations: cfg.GetAnnotations()}
	for _, pm := range cfg.GetPortMappings() {
		pod.PortMappings = append(pod.PortMappings, vmnet.PortMapping{HostPort: pm.GetHostPort(), ContainerPort: pm.GetContainerPort(),
			Protocol: strings.ToLower(pm.GetProtocol().String()), HostIP: pm.GetHostIp()})
	}
	att, err := b.net.Setup(ctx, id, pod)
	if err != nil {
		b.net.Teardown(context.WithoutCancel(ctx), id)
		os.RemoveAll(b.store.sandboxDir(id))
		return nil, status.Errorf(codes.Unknown, "VM pod network: %v", err)
	}
	if att.Hostname == "" {
		att.Hostname = cfg.GetHostname()
	}
	if dns := podDNSServers(cfg.GetDnsConfig()); len(dns) > 0 {
		att.DNS = dns
	}
	sb.Netns, sb.IPs, sb.Net, sb.Ready = att.Netns, att.IPs, att, true
	if err := b.store.saveSandbox(sb); err != nil {
		b.net.Teardown(context.WithoutCancel(ctx), id)
		os.RemoveAll(b.store.sandboxDir(id))
		return nil, status.Errorf(codes.Internal, "saving sandbox: %v", err)
	}
	b.log.WithFields(map[string]any{"sandbox": id, "pod": md.GetNamespace() + "/" + md.GetName(), "ips": att.IPs}).Info("VM pod sandbox ready")
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: id}, nil
}

// sandboxName is the name a sandbox reserves, as containerd makes it:
// one sandbox per pod name, namespace, UID and attempt.
func sandboxName(md *runtimeapi.PodSandboxMetadata) string {
	return fmt.Sprintf("%s_%s_%s_%d", md.GetName(), md.GetNamespace(), md.GetUid(), md.GetAttempt())
}

// reserveSandboxName makes a retried RunPodSandbox (the kubelet's, after
// a timeout) fail instead of making a second VM pod: the name is held by
// a RunPodSandbox still running, or by a sandbox in the store until it is
// removed. release drops the in-flight hold; the store's copy stays.
func (b *Backend) reserveSandboxName(md *runtimeapi.PodSandboxMetadata, id string) (release func(), err error) {
	name := sandboxName(md)
	b.namesMu.Lock()
	defer b.namesMu.Unlock()
	holder := b.reserving[name]
	if holder == "" {
		sbs, err := b.store.sandboxes()
		if err != nil {
			return nil, status.Errorf(codes.Internal, "listing VM sandboxes: %v", err)
		}
		for _, sb := range sbs {
			if sandboxName(sb.Metadata) == name {
				holder = sb.ID
				break
			}
		}
	}
	if holder != "" {
		return nil, status.Errorf(codes.AlreadyExists, "pod sandbox name %q is reserved for %s", name, holder)
	}
	b.reserving[name] = id
	return func() {
		b.namesMu.Lock()
		delete(b.reserving, name)
		b.namesMu.Unlock()
	}, nil
}

// checkOverhead refuses a pod whose memory limit the kubelet enforces on
// the pod cgroup without room for QEMU: the VM's cgroup asks for the
// guest's RAM plus QEMUOverheadMiB, and a RuntimeClass without
// overhead.podFixed would have the kernel kill QEMU under the pod cgroup's
// limit as soon as the guest touches its RAM.
func checkOverhead(l *runtimeapi.LinuxPodSandboxConfig) error {
	if l.GetResources().GetMemoryLimitInBytes() <= 0 {
		return nil // no pod limit: nothing caps QEMU below the VM's own limit
	}
	if oh := l.GetOverhead().GetMemoryLimitInBytes(); oh < QEMUOverheadMiB*mib {
		return status.Errorf(codes.InvalidArgument,
			"evelet guardrail %q: the pod's RuntimeClass (handler %s) declares %dMi of memory overhead; a VM needs %dMi beyond the guest's RAM for QEMU, so the pod cgroup's limit would kill it. Give the RuntimeClass overhead.podFixed.memory: %dMi (deploy/runtimeclass-eve-vm.yaml)",
			RuleVMOverhead, Handler, oh/mib, QEMUOverheadMiB, QEMUOverheadMiB)
	}
	return nil
}

func (b *Backend) StopPodSandbox(ctx context.Context, req *runtimeapi.StopPodSandboxRequest, _ ...grpc.CallOption) (*runtimeapi.StopPodSandboxResponse, error) {
	id := req.GetPodSandboxId()
	if _, err := b.store.sandbox(id); err != nil {
		return nil, lookupErr("pod sandbox", id, err)
	}
	if err := b.stopSandbox(ctx, id); err != nil {
		return nil, err
	}
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

// stopSandbox kills the sandbox's VMs and tears its network down.
func (b *Backend) stopSandbox(ctx context.Context, id string) error {
	cs, err := b.sandboxContainers(id)
	if err != nil {
		return err
	}
	for _, c := range cs {
		if err := b.stopContainer(ctx, c, 0); err != nil {
			return err
		}
	}
	defer b.lock(id)()
	sb, err := b.store.sandbox(id)
	if err != nil {
		return lookupErr("pod sandbox", id, err)
	}
	if err := b.net.Teardown(ctx, id); err != nil {
		return status.Errorf(codes.Unknown, "VM pod network teardown: %v", err)
	}
	if sb.Ready {
		sb.Ready = false
		if err := b.store.saveSandbox(sb); err != nil {
			return status.Errorf(codes.Internal, "saving sandbox: %v", err)
		}
	}
	return nil
}

func (b *Backend) RemovePodSandbox(ctx context.Context, req *runtimeapi.RemovePodSandboxRequest, _ ...grpc.CallOption) (*runtimeapi.RemovePodSandboxResponse, error) {
	id := req.GetPodSandboxId()
	if _, err := b.store.sandbox(id); err != nil {
		return nil, lookupErr("pod sandbox", id, err)
	}
	if err := b.stopSandbox(ctx, id); err != nil {
		return nil, err
	}
	cs, err := b.sandboxContainers(id)
	if err != nil {
		return nil, err
	}
	for _, c := range cs {
		if err := b.removeContainer(ctx, c.ID); err != nil {
			return nil, err
		}
	}
	defer b.lock(id)()
	if err := os.RemoveAll(b.store.sandboxDir(id)); err != nil {
		return nil, status.Errorf(codes.Internal, "removing sandbox: %v", err)
	}
	return &runtimeapi.RemovePodSandboxResponse{}, nil
}

func (b *Backend) PodSandboxStatus(ctx context.Context, req *runtimeapi.PodSandboxStatusRequest, _ ...grpc.CallOption) (*runtimeapi.PodSandboxStatusResponse, error) {
	id := req.GetPodSandboxId()
	sb, err := b.store.sandbox(id)
	if err != nil {
		return nil, lookupErr("pod sandbox", id, err)
	}
	st := &runtimeapi.PodSandboxStatus{
		Id: sb.ID, Metadata: sb.Metadata, State: b.sandboxState(sb), CreatedAt: sb.CreatedAt,
		Labels: sb.Labels, Annotations: sb.Annotations, RuntimeHandler: sb.RuntimeHandler,
		Linux: &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{Options: &runtimeapi.NamespaceOption{
			Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_POD, Ipc: runtimeapi.NamespaceMode_POD}}},
	}
	if len(sb.IPs) > 0 {
		st.Network = &runtimeapi.PodSandboxNetworkStatus{Ip: sb.IPs[0]}
		for _, ip := range sb.IPs[1:] {
			st.Network.AdditionalIps = append(st.Network.AdditionalIps, &runtimeapi.PodIP{Ip: ip})
		}
	}
	return &runtimeapi.PodSandboxStatusResponse{Status: st}, nil
}

// sandboxState is READY while the sandbox is and its netns still exists
// (after a host reboot, /run is empty: the kubelet then makes a new pod).
func (b *Backend) sandboxState(sb *sandboxState) runtimeapi.PodSandboxState {
	if !sb.Ready {
		return runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	}
	if sb.Netns != "" {
		if _, err := os.Stat(sb.Netns); errors.Is(err, fs.ErrNotExist) {
			return runtimeapi.PodSandboxState_SANDBOX_NOTREADY
		}
	}
	return runtimeapi.PodSandboxState_SANDBOX_READY
}

func (b *Backend) ListPodSandbox(ctx context.Context, req *runtimeapi.ListPodSandboxRequest, _ ...grpc.CallOption) (*runtimeapi.ListPodSandboxResponse, error) {
	sbs, err := b.store.sandboxes()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "listing VM sandboxes: %v", err)
	}
	f := req.GetFilter()
	var out []*runtimeapi.PodSandbox
	for _, sb := range sbs {
		state := b.sandboxState(sb)
		if f.GetId() != "" && f.GetId() != sb.ID {
			continue
		}
		if f.GetState() != nil && f.GetState().GetState() != state {
			continue
		}
		if !matchLabels(sb.Labels, f.GetLabelSelector()) {
			continue
		}
		out = append(out, &runtimeapi.PodSandbox{Id: sb.ID, Metadata: sb.Metadata, State: state, CreatedAt: sb.CreatedAt,
			Labels: sb.Labels, Annotations: sb.Annotations, RuntimeHandler: sb.RuntimeHandler})
	}
	return &runtimeapi.ListPodSandboxResponse{Items: out}, nil
}

func (b *Backend) PortForward(ctx context.Context, req *runtimeapi.PortForwardRequest, _ ...grpc.CallOption) (*runtimeapi.PortForwardResponse, error) {
	if _, err := b.store.sandbox(req.GetPodSandboxId()); err != nil {
		return nil, lookupErr("pod sandbox", req.GetPodSandboxId(), err)
	}
	return nil, status.Error(codes.Unimplemented, stream.ErrPortForward.Error())
}

func (b *Backend) UpdatePodSandboxResources(ctx context.Context, req *runtimeapi.UpdatePodSandboxResourcesRequest, _ ...grpc.CallOption) (*runtimeapi.UpdatePodSandboxResourcesResponse, error) {
	if _, err := b.store.sandbox(req.GetPodSandboxId()); err != nil {
		return nil, lookupErr("pod sandbox", req.GetPodSandboxId(), err)
	}
	return nil, unsupported("resizing a running pod")
}

// sandboxContainers lists the containers of a sandbox.
func (b *Backend) sandboxContainers(id string) ([]*containerState, error) {
	all, err := b.store.containers()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "listing VM containers: %v", err)
	}
	var out []*containerState
	for _, c := range all {
		if c.SandboxID == id {
			out = append(out, c)
		}
	}
	return out, nil
}

func matchLabels(labels, selector map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// podDNSServers are the kubelet's DNS servers for the pod (the cluster's
// DNS, e.g. the node-local one, for dnsPolicy ClusterFirst): they take the
// place of the CNI result's, as in the resolv.conf containerd writes for a
// container pod. The guest gets them by DHCP. Entries that are not IPv4
// addresses are left out (DHCPv4 carries only those).
func podDNSServers(c *runtimeapi.DNSConfig) []netip.Addr {
	var out []netip.Addr
	for _, s := range c.GetServers() {
		if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
			out = append(out, a)
		}
	}
	return out
}
