package cri

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"

	"github.com/sirupsen/logrus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/policy"
	"github.com/lf-edge/evelet/version"
)

// Answers to Version. RuntimeName is ours, not the backend's: the node's
// containerRuntimeVersion should say what the kubelet really talks to.
const (
	runtimeName = "evelet"
	// kubeletAPIVersion is the CRI "Version" field: the kubelet runtime API version.
	kubeletAPIVersion = "0.1.0"
	runtimeAPIVersion = "v1"
)

// runtimeService forwards RuntimeService calls to the backend the Router picks.
// Backend errors are returned as they are, so their gRPC codes reach the kubelet.
type runtimeService struct {
	// Unsafe rather than Unimplemented: when a cri-api bump adds an RPC, the
	// build breaks here instead of the kubelet silently getting Unimplemented.
	runtimeapi.UnsafeRuntimeServiceServer
	r   *Router
	log *logrus.Entry
	// stopping is closed when the server begins to shut down.
	stopping <-chan struct{}
	// policy is the guardrail policy in force (Server.SetPolicy swaps it).
	policy  *atomic.Pointer[policy.Policy]
	metrics *Metrics  // nil: none
	pods    PodSource // nil: no spec-level rules
	gate    *sandboxGate
	// claimsDir holds the DRA driver's prepared claims (claims.go); "":
	// none, claim devices are refused.
	claimsDir string
}

var _ runtimeapi.RuntimeServiceServer = (*runtimeService)(nil)

func (s *runtimeService) Version(ctx context.Context, req *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	// The kubelet checks the runtime with Version before anything else, so an
	// unreachable backend must make it fail even though we answer for
	// ourselves. Only the default backend counts, as for Status.
	b := s.defaultBackend(ctx)
	v, err := b.Version(ctx, req)
	if err != nil {
		return nil, err
	}
	s.log.WithFields(logrus.Fields{
		"backend": b.Name(), "runtime": v.GetRuntimeName(), "runtimeVersion": v.GetRuntimeVersion(),
		"apiVersion": v.GetRuntimeApiVersion(),
	}).Debug("backend version")
	return &runtimeapi.VersionResponse{
		Version:           kubeletAPIVersion,
		RuntimeName:       runtimeName,
		RuntimeVersion:    version.Version,
		RuntimeApiVersion: runtimeAPIVersion,
	}, nil
}

// Pod sandboxes.

func (s *runtimeService) RunPodSandbox(ctx context.Context, req *runtimeapi.RunPodSandboxRequest) (*runtimeapi.RunPodSandboxResponse, error) {
	// The guardrails come first: nothing of a refused pod reaches a backend.
	p := s.policy.Load()
	if err := s.admit(p.CheckSandbox(req.GetConfig())); err != nil {
		return nil, err
	}
	b := s.r.ForHandler(req.GetRuntimeHandler())
	if s.pods != nil {
		pod, err := specPod(ctx, s.pods, req.GetConfig())
		if err != nil {
			return nil, err
		}
		if err := s.admit(p.CheckPodSpec(pod)); err != nil {
			return nil, err
		}
		if pc, ok := b.(PodChecker); ok {
			if err := s.admit(pc.CheckPod(pod)); err != nil {
				return nil, err
			}
		}
	}
	noteBackend(ctx, b.Name())
	s.gate.mu.RLock()
	defer s.gate.mu.RUnlock()
	return b.RunPodSandbox(ctx, req)
}

func (s *runtimeService) StopPodSandbox(ctx context.Context, req *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	b, err := s.sandboxBackend(ctx, req.GetPodSandboxId())
	if err != nil {
		return idempotent(&runtimeapi.StopPodSandboxResponse{}, err)
	}
	return idempotent(b.StopPodSandbox(ctx, req))
}

func (s *runtimeService) RemovePodSandbox(ctx context.Context, req *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	b, err := s.sandboxBackend(ctx, req.GetPodSandboxId())
	if err != nil {
		return idempotent(&runtimeapi.RemovePodSandboxResponse{}, err)
	}
	return idempotent(b.RemovePodSandbox(ctx, req))
}

func (s *runtimeService) PodSandboxStatus(ctx context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	b, err := s.sandboxBackend(ctx, req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	return b.PodSandboxStatus(ctx, req)
}

func (s *runtimeService) ListPodSandbox(ctx context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	if s.single() {
		return s.defaultBackend(ctx).ListPodSandbox(ctx, req)
	}
	items, err := gather(ctx, s.r, func(b Backend) ([]*runtimeapi.PodSandbox, error) {
		resp, err := b.ListPodSandbox(ctx, req)
		return resp.GetItems(), err
	})
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ListPodSandboxResponse{Items: items}, nil
}

func (s *runtimeService) PortForward(ctx context.Context, req *runtimeapi.PortForwardRequest) (*runtimeapi.PortForwardResponse, error) {
	// Like Exec and Attach, the answer is a URL on the backend's own streaming
	// server, which the kubelet proxies; the stream never passes through us.
	b, err := s.sandboxBackend(ctx, req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	return b.PortForward(ctx, req)
}

func (s *runtimeService) UpdatePodSandboxResources(ctx context.Context, req *runtimeapi.UpdatePodSandboxResourcesRequest) (*runtimeapi.UpdatePodSandboxResourcesResponse, error) {
	b, err := s.sandboxBackend(ctx, req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	return b.UpdatePodSandboxResources(ctx, req)
}

// Containers.

func (s *runtimeService) CreateContainer(ctx context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	// The guardrails come before routing, which may ask the backends.
	p := s.policy.Load()
	if err := s.admit(s.nameEphemeral(ctx, req, p.CheckContainer(req.GetSandboxConfig(), req.GetConfig()))); err != nil {
		return nil, err
	}
	// Devices of prepared ResourceClaims (claims.go), after the rules that
	// judge what the request itself names.
	cfg, err := applyClaims(s.claimsDir, *p, req.GetSandboxConfig(), req.GetConfig())
	if err := s.admit(s.nameEphemeral(ctx, req, err)); err != nil {
		return nil, err
	}
	if cfg != req.GetConfig() {
		req = proto.Clone(req).(*runtimeapi.CreateContainerRequest)
		req.Config = cfg
	}
	// A container lives in its sandbox's backend.
	b, err := s.sandboxBackend(ctx, req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	return b.CreateContainer(ctx, req)
}

func (s *runtimeService) StartContainer(ctx context.Context, req *runtimeapi.StartContainerRequest) (*runtimeapi.StartContainerResponse, error) {
	b, err := s.containerBackend(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	return b.StartContainer(ctx, req)
}

func (s *runtimeService) StopContainer(ctx context.Context, req *runtimeapi.StopContainerRequest) (*runtimeapi.StopContainerResponse, error) {
	b, err := s.containerBackend(ctx, req.GetContainerId())
	if err != nil {
		return idempotent(&runtimeapi.StopContainerResponse{}, err)
	}
	return idempotent(b.StopContainer(ctx, req))
}

func (s *runtimeService) RemoveContainer(ctx context.Context, req *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	b, err := s.containerBackend(ctx, req.GetContainerId())
	if err != nil {
		return idempotent(&runtimeapi.RemoveContainerResponse{}, err)
	}
	return idempotent(b.RemoveContainer(ctx, req))
}

func (s *runtimeService) ListContainers(ctx context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	if s.single() {
		return s.defaultBackend(ctx).ListContainers(ctx, req)
	}
	items, err := gather(ctx, s.r, func(b Backend) ([]*runtimeapi.Container, error) {
		resp, err := b.ListContainers(ctx, req)
		return resp.GetContainers(), err
	})
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ListContainersResponse{Containers: items}, nil
}

func (s *runtimeService) ContainerStatus(ctx context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	b, err := s.containerBackend(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	return b.ContainerStatus(ctx, req)
}

func (s *runtimeService) UpdateContainerResources(ctx context.Context, req *runtimeapi.UpdateContainerResourcesRequest) (*runtimeapi.UpdateContainerResourcesResponse, error) {
	b, err := s.containerBackend(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	return b.UpdateContainerResources(ctx, req)
}

func (s *runtimeService) ReopenContainerLog(ctx context.Context, req *runtimeapi.ReopenContainerLogRequest) (*runtimeapi.ReopenContainerLogResponse, error) {
	b, err := s.containerBackend(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	return b.ReopenContainerLog(ctx, req)
}

func (s *runtimeService) ExecSync(ctx context.Context, req *runtimeapi.ExecSyncRequest) (*runtimeapi.ExecSyncResponse, error) {
	b, err := s.containerBackend(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	return b.ExecSync(ctx, req)
}

func (s *runtimeService) Exec(ctx context.Context, req *runtimeapi.ExecRequest) (*runtimeapi.ExecResponse, error) {
	b, err := s.containerBackend(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	return b.Exec(ctx, req)
}

func (s *runtimeService) Attach(ctx context.Context, req *runtimeapi.AttachRequest) (*runtimeapi.AttachResponse, error) {
	b, err := s.containerBackend(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	return b.Attach(ctx, req)
}

func (s *runtimeService) CheckpointContainer(ctx context.Context, req *runtimeapi.CheckpointContainerRequest) (*runtimeapi.CheckpointContainerResponse, error) {
	b, err := s.containerBackend(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	return b.CheckpointContainer(ctx, req)
}

// Stats and metrics.

func (s *runtimeService) ContainerStats(ctx context.Context, req *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	b, err := s.containerBackend(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	return b.ContainerStats(ctx, req)
}

func (s *runtimeService) ListContainerStats(ctx context.Context, req *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	if s.single() {
		return s.defaultBackend(ctx).ListContainerStats(ctx, req)
	}
	items, err := gather(ctx, s.r, func(b Backend) ([]*runtimeapi.ContainerStats, error) {
		resp, err := b.ListContainerStats(ctx, req)
		return resp.GetStats(), err
	})
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ListContainerStatsResponse{Stats: items}, nil
}

func (s *runtimeService) PodSandboxStats(ctx context.Context, req *runtimeapi.PodSandboxStatsRequest) (*runtimeapi.PodSandboxStatsResponse, error) {
	b, err := s.sandboxBackend(ctx, req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	return b.PodSandboxStats(ctx, req)
}

func (s *runtimeService) ListPodSandboxStats(ctx context.Context, req *runtimeapi.ListPodSandboxStatsRequest) (*runtimeapi.ListPodSandboxStatsResponse, error) {
	if s.single() {
		return s.defaultBackend(ctx).ListPodSandboxStats(ctx, req)
	}
	items, err := gather(ctx, s.r, func(b Backend) ([]*runtimeapi.PodSandboxStats, error) {
		resp, err := b.ListPodSandboxStats(ctx, req)
		return resp.GetStats(), err
	})
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ListPodSandboxStatsResponse{Stats: items}, nil
}

func (s *runtimeService) ListMetricDescriptors(ctx context.Context, req *runtimeapi.ListMetricDescriptorsRequest) (*runtimeapi.ListMetricDescriptorsResponse, error) {
	if s.single() {
		return s.defaultBackend(ctx).ListMetricDescriptors(ctx, req)
	}
	all, err := gather(ctx, s.r, func(b Backend) ([]*runtimeapi.MetricDescriptor, error) {
		resp, err := b.ListMetricDescriptors(ctx, req)
		return resp.GetDescriptors(), err
	})
	if err != nil {
		return nil, err
	}
	// The kubelet registers descriptors by name; backends share names such as
	// container_cpu_usage_seconds_total, so list each name once.
	seen := map[string]bool{}
	out := all[:0]
	for _, d := range all {
		if !seen[d.GetName()] {
			seen[d.GetName()] = true
			out = append(out, d)
		}
	}
	return &runtimeapi.ListMetricDescriptorsResponse{Descriptors: out}, nil
}

func (s *runtimeService) ListPodSandboxMetrics(ctx context.Context, req *runtimeapi.ListPodSandboxMetricsRequest) (*runtimeapi.ListPodSandboxMetricsResponse, error) {
	if s.single() {
		return s.defaultBackend(ctx).ListPodSandboxMetrics(ctx, req)
	}
	items, err := gather(ctx, s.r, func(b Backend) ([]*runtimeapi.PodSandboxMetrics, error) {
		resp, err := b.ListPodSandboxMetrics(ctx, req)
		return resp.GetPodMetrics(), err
	})
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ListPodSandboxMetricsResponse{PodMetrics: items}, nil
}

// Runtime-wide.

func (s *runtimeService) UpdateRuntimeConfig(ctx context.Context, req *runtimeapi.UpdateRuntimeConfigRequest) (*runtimeapi.UpdateRuntimeConfigResponse, error) {
	// The pod CIDR concerns every backend that sets up pod networking.
	if s.single() {
		return s.defaultBackend(ctx).UpdateRuntimeConfig(ctx, req)
	}
	noteBackend(ctx, BackendAll)
	var resp *runtimeapi.UpdateRuntimeConfigResponse
	for _, b := range s.r.Backends() {
		r, err := b.UpdateRuntimeConfig(ctx, req)
		if err != nil {
			return nil, err
		}
		if b == s.r.Default() {
			resp = r
		}
	}
	return resp, nil
}

func (s *runtimeService) Status(ctx context.Context, req *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	// Node readiness follows the default backend; a VM backend being down must
	// not take the container pods' node out of service.
	return s.defaultBackend(ctx).Status(ctx, req)
}

func (s *runtimeService) RuntimeConfig(ctx context.Context, req *runtimeapi.RuntimeConfigRequest) (*runtimeapi.RuntimeConfigResponse, error) {
	// The cgroup driver is a property of the host, which the default backend reports.
	return s.defaultBackend(ctx).RuntimeConfig(ctx, req)
}

func (s *runtimeService) single() bool { return len(s.r.Backends()) == 1 }

// nameEphemeral says "ephemeral container" in a refusal of a container
// that is one of the pod's ephemeral containers (kubectl debug): the CRI
// request does not tell, the pod does. Without the pod the refusal stays
// as it is.
func (s *runtimeService) nameEphemeral(ctx context.Context, req *runtimeapi.CreateContainerRequest, err error) error {
	var v *policy.Violation
	if err == nil || s.pods == nil || !errors.As(err, &v) || !strings.HasPrefix(v.Subject, "container ") {
		return err
	}
	pod, perr := specPod(ctx, s.pods, req.GetSandboxConfig())
	if perr != nil || pod == nil {
		return err
	}
	name := req.GetConfig().GetMetadata().GetName()
	for _, ec := range pod.Spec.EphemeralContainers {
		if ec.Name == name {
			nv := *v
			nv.Subject = "ephemeral " + v.Subject
			return &nv
		}
	}
	return err
}

// admit turns a policy refusal into the PermissionDenied error the kubelet
// shows in the pod's events, and counts and logs it.
func (s *runtimeService) admit(err error) error {
	if err == nil {
		return nil
	}
	var v *policy.Violation
	if errors.As(err, &v) {
		s.metrics.rejected(v.Rule)
		s.log.WithField("rule", v.Rule).Warn(v.Error())
		return status.Error(codes.PermissionDenied, v.Error())
	}
	return err
}

// defaultBackend, sandboxBackend and containerBackend pick the backend for a
// call and note it for the metrics.
func (s *runtimeService) defaultBackend(ctx context.Context) Backend {
	b := s.r.Default()
	noteBackend(ctx, b.Name())
	return b
}

func (s *runtimeService) sandboxBackend(ctx context.Context, id string) (Backend, error) {
	b, err := s.r.ForSandbox(ctx, id)
	if err == nil {
		noteBackend(ctx, b.Name())
	}
	return b, err
}

func (s *runtimeService) containerBackend(ctx context.Context, id string) (Backend, error) {
	b, err := s.r.ForContainer(ctx, id)
	if err == nil {
		noteBackend(ctx, b.Name())
	}
	return b, err
}

// idempotent answers success for NotFound. The CRI contract (cri-api
// api.proto) says Stop/Remove of a sandbox or container "is idempotent, and
// must not return an error if" it is already stopped or removed;
// containerd 1.6 answers NotFound to StopPodSandbox and StopContainer of an
// unknown ID, and upstream critest checks the contract.
func idempotent[T any](resp *T, err error) (*T, error) {
	if status.Code(err) == codes.NotFound {
		return new(T), nil
	}
	return resp, err
}

// gather calls list on every backend in order and concatenates the results.
// Any error fails the whole list: a partial list would make the kubelet
// believe the missing pods are gone and kill or recreate them.
func gather[T any](ctx context.Context, r *Router, list func(Backend) ([]T, error)) ([]T, error) {
	noteBackend(ctx, BackendAll)
	var out []T
	for _, b := range r.Backends() {
		items, err := list(b)
		if err != nil {
			return nil, err
		}
		out = append(out, items...)
	}
	return out, nil
}
