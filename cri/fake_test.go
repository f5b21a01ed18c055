package cri_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fake is an in-process CRI runtime: it records every request and answers
// with the canned (distinctive) response for the method, or an injected error.
type fake struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer

	mu       sync.Mutex
	calls    []call
	errs     map[string]error
	override map[string]proto.Message
	// owned, when set, lists the only sandbox/container IDs this fake knows;
	// the status calls answer NotFound for others (as a real runtime does).
	owned  map[string]bool
	events []*runtimeapi.ContainerEventResponse
	// hold keeps GetContainerEvents open after the events, until the client goes.
	hold        bool
	openStreams atomic.Int32
}

type call struct {
	method string
	req    proto.Message
}

func newFake() *fake {
	return &fake{errs: map[string]error{}, override: map[string]proto.Message{}}
}

func (f *fake) setErr(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs[method] = err
}

func (f *fake) setResponse(method string, resp proto.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.override[method] = resp
}

// last returns the last request seen for method, or nil.
func (f *fake) last(method string) proto.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.calls) - 1; i >= 0; i-- {
		if f.calls[i].method == method {
			return f.calls[i].req
		}
	}
	return nil
}

func (f *fake) count(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if c.method == method {
			n++
		}
	}
	return n
}

func (f *fake) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

func (f *fake) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
	f.errs = map[string]error{}
	f.override = map[string]proto.Message{}
}

func (f *fake) record(method string, req proto.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call{method, proto.Clone(req)})
	return f.errs[method]
}

func (f *fake) knows(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.owned == nil || f.owned[id]
}

// answer records req and returns the injected error or the response for method.
func answer[Resp proto.Message](f *fake, method string, req proto.Message) (Resp, error) {
	var zero Resp
	if err := f.record(method, req); err != nil {
		return zero, err
	}
	f.mu.Lock()
	resp, ok := f.override[method]
	f.mu.Unlock()
	if !ok {
		resp = canned[method]
	}
	return resp.(Resp), nil
}

// canned holds a recognisable response per method.
var canned = map[string]proto.Message{
	"Version":                   &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "fake-containerd", RuntimeVersion: "v9.8.7", RuntimeApiVersion: "v1"},
	"RunPodSandbox":             &runtimeapi.RunPodSandboxResponse{PodSandboxId: "sb-created"},
	"StopPodSandbox":            &runtimeapi.StopPodSandboxResponse{},
	"RemovePodSandbox":          &runtimeapi.RemovePodSandboxResponse{},
	"PodSandboxStatus":          &runtimeapi.PodSandboxStatusResponse{Status: &runtimeapi.PodSandboxStatus{Id: "sb-1", State: runtimeapi.PodSandboxState_SANDBOX_READY}, Info: map[string]string{"k": "v"}, Timestamp: 1234},
	"ListPodSandbox":            &runtimeapi.ListPodSandboxResponse{Items: []*runtimeapi.PodSandbox{{Id: "sb-1", RuntimeHandler: "runc"}, {Id: "sb-2"}}},
	"CreateContainer":           &runtimeapi.CreateContainerResponse{ContainerId: "ctr-created"},
	"StartContainer":            &runtimeapi.StartContainerResponse{},
	"StopContainer":             &runtimeapi.StopContainerResponse{},
	"RemoveContainer":           &runtimeapi.RemoveContainerResponse{},
	"ListContainers":            &runtimeapi.ListContainersResponse{Containers: []*runtimeapi.Container{{Id: "ctr-1", PodSandboxId: "sb-1", State: runtimeapi.ContainerState_CONTAINER_RUNNING}}},
	"ContainerStatus":           &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{Id: "ctr-1", ExitCode: 42, Reason: "Error"}},
	"UpdateContainerResources":  &runtimeapi.UpdateContainerResourcesResponse{},
	"ReopenContainerLog":        &runtimeapi.ReopenContainerLogResponse{},
	"ExecSync":                  &runtimeapi.ExecSyncResponse{Stdout: []byte("out"), Stderr: []byte("err"), ExitCode: 3},
	"Exec":                      &runtimeapi.ExecResponse{Url: "http://127.0.0.1:1/exec/abc"},
	"Attach":                    &runtimeapi.AttachResponse{Url: "http://127.0.0.1:1/attach/abc"},
	"PortForward":               &runtimeapi.PortForwardResponse{Url: "http://127.0.0.1:1/portforward/abc"},
	"ContainerStats":            &runtimeapi.ContainerStatsResponse{Stats: &runtimeapi.ContainerStats{Attributes: &runtimeapi.ContainerAttributes{Id: "ctr-1"}, Cpu: &runtimeapi.CpuUsage{Timestamp: 7, UsageCoreNanoSeconds: &runtimeapi.UInt64Value{Value: 77}}}},
	"ListContainerStats":        &runtimeapi.ListContainerStatsResponse{Stats: []*runtimeapi.ContainerStats{{Attributes: &runtimeapi.ContainerAttributes{Id: "ctr-1"}}}},
	"PodSandboxStats":           &runtimeapi.PodSandboxStatsResponse{Stats: &runtimeapi.PodSandboxStats{Attributes: &runtimeapi.PodSandboxAttributes{Id: "sb-1"}}},
	"ListPodSandboxStats":       &runtimeapi.ListPodSandboxStatsResponse{Stats: []*runtimeapi.PodSandboxStats{{Attributes: &runtimeapi.PodSandboxAttributes{Id: "sb-1"}}}},
	"UpdateRuntimeConfig":       &runtimeapi.UpdateRuntimeConfigResponse{},
	"Status":                    &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{{Type: runtimeapi.RuntimeReady, Status: true}, {Type: runtimeapi.NetworkReady, Status: false, Reason: "NoCNI"}}}, Info: map[string]string{"config": "{}"}},
	"CheckpointContainer":       &runtimeapi.CheckpointContainerResponse{},
	"ListMetricDescriptors":     &runtimeapi.ListMetricDescriptorsResponse{Descriptors: []*runtimeapi.MetricDescriptor{{Name: "container_cpu_usage_seconds_total", Help: "cpu", LabelKeys: []string{"id"}}}},
	"ListPodSandboxMetrics":     &runtimeapi.ListPodSandboxMetricsResponse{PodMetrics: []*runtimeapi.PodSandboxMetrics{{PodSandboxId: "sb-1"}}},
	"RuntimeConfig":             &runtimeapi.RuntimeConfigResponse{Linux: &runtimeapi.LinuxRuntimeConfiguration{CgroupDriver: runtimeapi.CgroupDriver_CGROUPFS}},
	"UpdatePodSandboxResources": &runtimeapi.UpdatePodSandboxResourcesResponse{},
	"ListImages":                &runtimeapi.ListImagesResponse{Images: []*runtimeapi.Image{{Id: "sha256:aaa", RepoTags: []string{"example.com/app:1"}, Size: 1234}}},
	"ImageStatus":               &runtimeapi.ImageStatusResponse{Image: &runtimeapi.Image{Id: "sha256:bbb", Size: 99}, Info: map[string]string{"info": "x"}},
	"PullImage":                 &runtimeapi.PullImageResponse{ImageRef: "sha256:ccc"},
	"RemoveImage":               &runtimeapi.RemoveImageResponse{},
	"ImageFsInfo":               &runtimeapi.ImageFsInfoResponse{ImageFilesystems: []*runtimeapi.FilesystemUsage{{Timestamp: 5, FsId: &runtimeapi.FilesystemIdentifier{Mountpoint: "/var/lib/fake"}, UsedBytes: &runtimeapi.UInt64Value{Value: 4096}}}},
}

// Runtime service.

func (f *fake) Version(_ context.Context, r *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return answer[*runtimeapi.VersionResponse](f, "Version", r)
}
func (f *fake) RunPodSandbox(_ context.Context, r *runtimeapi.RunPodSandboxRequest) (*runtimeapi.RunPodSandboxResponse, error) {
	return answer[*runtimeapi.RunPodSandboxResponse](f, "RunPodSandbox", r)
}
func (f *fake) StopPodSandbox(_ context.Context, r *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	return answer[*runtimeapi.StopPodSandboxResponse](f, "StopPodSandbox", r)
}
func (f *fake) RemovePodSandbox(_ context.Context, r *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	return answer[*runtimeapi.RemovePodSandboxResponse](f, "RemovePodSandbox", r)
}
func (f *fake) PodSandboxStatus(_ context.Context, r *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	resp, err := answer[*runtimeapi.PodSandboxStatusResponse](f, "PodSandboxStatus", r)
	if err == nil && !f.knows(r.GetPodSandboxId()) {
		return nil, status.Errorf(codes.NotFound, "sandbox %s not found", r.GetPodSandboxId())
	}
	return resp, err
}
func (f *fake) ListPodSandbox(_ context.Context, r *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	return answer[*runtimeapi.ListPodSandboxResponse](f, "ListPodSandbox", r)
}
func (f *fake) CreateContainer(_ context.Context, r *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	return answer[*runtimeapi.CreateContainerResponse](f, "CreateContainer", r)
}
func (f *fake) StartContainer(_ context.Context, r *runtimeapi.StartContainerRequest) (*runtimeapi.StartContainerResponse, error) {
	return answer[*runtimeapi.StartContainerResponse](f, "StartContainer", r)
}
func (f *fake) StopContainer(_ context.Context, r *runtimeapi.StopContainerRequest) (*runtimeapi.StopContainerResponse, error) {
	return answer[*runtimeapi.StopContainerResponse](f, "StopContainer", r)
}
func (f *fake) RemoveContainer(_ context.Context, r *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	return answer[*runtimeapi.RemoveContainerResponse](f, "RemoveContainer", r)
}
func (f *fake) ListContainers(_ context.Context, r *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	return answer[*runtimeapi.ListContainersResponse](f, "ListContainers", r)
}
func (f *fake) ContainerStatus(_ context.Context, r *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	resp, err := answer[*runtimeapi.ContainerStatusResponse](f, "ContainerStatus", r)
	if err == nil && !f.knows(r.GetContainerId()) {
		return nil, status.Errorf(codes.NotFound, "container %s not found", r.GetContainerId())
	}
	return resp, err
}
func (f *fake) UpdateContainerResources(_ context.Context, r *runtimeapi.UpdateContainerResourcesRequest) (*runtimeapi.UpdateContainerResourcesResponse, error) {
	return answer[*runtimeapi.UpdateContainerResourcesResponse](f, "UpdateContainerResources", r)
}
func (f *fake) ReopenContainerLog(_ context.Context, r *runtimeapi.ReopenContainerLogRequest) (*runtimeapi.ReopenContainerLogResponse, error) {
	return answer[*runtimeapi.ReopenContainerLogResponse](f, "ReopenContainerLog", r)
}
func (f *fake) ExecSync(_ context.Context, r *runtimeapi.ExecSyncRequest) (*runtimeapi.ExecSyncResponse, error) {
	return answer[*runtimeapi.ExecSyncResponse](f, "ExecSync", r)
}
func (f *fake) Exec(_ context.Context, r *runtimeapi.ExecRequest) (*runtimeapi.ExecResponse, error) {
	return answer[*runtimeapi.ExecResponse](f, "Exec", r)
}
func (f *fake) Attach(_ context.Context, r *runtimeapi.AttachRequest) (*runtimeapi.AttachResponse, error) {
	return answer[*runtimeapi.AttachResponse](f, "Attach", r)
}
func (f *fake) PortForward(_ context.Context, r *runtimeapi.PortForwardRequest) (*runtimeapi.PortForwardResponse, error) {
	return answer[*runtimeapi.PortForwardResponse](f, "PortForward", r)
}
func (f *fake) ContainerStats(_ context.Context, r *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	return answer[*runtimeapi.ContainerStatsResponse](f, "ContainerStats", r)
}
func (f *fake) ListContainerStats(_ context.Context, r *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	return answer[*runtimeapi.ListContainerStatsResponse](f, "ListContainerStats", r)
}
func (f *fake) PodSandboxStats(_ context.Context, r *runtimeapi.PodSandboxStatsRequest) (*runtimeapi.PodSandboxStatsResponse, error) {
	return answer[*runtimeapi.PodSandboxStatsResponse](f, "PodSandboxStats", r)
}
func (f *fake) ListPodSandboxStats(_ context.Context, r *runtimeapi.ListPodSandboxStatsRequest) (*runtimeapi.ListPodSandboxStatsResponse, error) {
	return answer[*runtimeapi.ListPodSandboxStatsResponse](f, "ListPodSandboxStats", r)
}
func (f *fake) UpdateRuntimeConfig(_ context.Context, r *runtimeapi.UpdateRuntimeConfigRequest) (*runtimeapi.UpdateRuntimeConfigResponse, error) {
	return answer[*runtimeapi.UpdateRuntimeConfigResponse](f, "UpdateRuntimeConfig", r)
}
func (f *fake) Status(_ context.Context, r *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	return answer[*runtimeapi.StatusResponse](f, "Status", r)
}
func (f *fake) CheckpointContainer(_ context.Context, r *runtimeapi.CheckpointContainerRequest) (*runtimeapi.CheckpointContainerResponse, error) {
	return answer[*runtimeapi.CheckpointContainerResponse](f, "CheckpointContainer", r)
}
func (f *fake) ListMetricDescriptors(_ context.Context, r *runtimeapi.ListMetricDescriptorsRequest) (*runtimeapi.ListMetricDescriptorsResponse, error) {
	return answer[*runtimeapi.ListMetricDescriptorsResponse](f, "ListMetricDescriptors", r)
}
func (f *fake) ListPodSandboxMetrics(_ context.Context, r *runtimeapi.ListPodSandboxMetricsRequest) (*runtimeapi.ListPodSandboxMetricsResponse, error) {
	return answer[*runtimeapi.ListPodSandboxMetricsResponse](f, "ListPodSandboxMetrics", r)
}
func (f *fake) RuntimeConfig(_ context.Context, r *runtimeapi.RuntimeConfigRequest) (*runtimeapi.RuntimeConfigResponse, error) {
	return answer[*runtimeapi.RuntimeConfigResponse](f, "RuntimeConfig", r)
}
func (f *fake) UpdatePodSandboxResources(_ context.Context, r *runtimeapi.UpdatePodSandboxResourcesRequest) (*runtimeapi.UpdatePodSandboxResourcesResponse, error) {
	return answer[*runtimeapi.UpdatePodSandboxResourcesResponse](f, "UpdatePodSandboxResources", r)
}

func (f *fake) GetContainerEvents(r *runtimeapi.GetEventsRequest, stream grpc.ServerStreamingServer[runtimeapi.ContainerEventResponse]) error {
	if err := f.record("GetContainerEvents", r); err != nil {
		return err
	}
	f.openStreams.Add(1)
	defer f.openStreams.Add(-1)
	f.mu.Lock()
	events, hold := f.events, f.hold
	f.mu.Unlock()
	for _, ev := range events {
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	if hold {
		<-stream.Context().Done()
		return stream.Context().Err()
	}
	return nil
}

// Image service.

func (f *fake) ListImages(_ context.Context, r *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	return answer[*runtimeapi.ListImagesResponse](f, "ListImages", r)
}
func (f *fake) ImageStatus(_ context.Context, r *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	return answer[*runtimeapi.ImageStatusResponse](f, "ImageStatus", r)
}
func (f *fake) PullImage(_ context.Context, r *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	return answer[*runtimeapi.PullImageResponse](f, "PullImage", r)
}
func (f *fake) RemoveImage(_ context.Context, r *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	return answer[*runtimeapi.RemoveImageResponse](f, "RemoveImage", r)
}
func (f *fake) ImageFsInfo(_ context.Context, r *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	return answer[*runtimeapi.ImageFsInfoResponse](f, "ImageFsInfo", r)
}

// shortDir returns a fresh directory with a short path: unix socket paths
// are limited to 107 bytes and t.TempDir() embeds the test name.
func shortDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "evl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// serveFake runs f as a real gRPC CRI server on a unix socket and returns the
// socket path and a function that stops it early.
func serveFake(t testing.TB, f *fake) (string, func()) {
	t.Helper()
	sock := filepath.Join(shortDir(t), "fake.sock")
	return sock, serveFakeAt(t, f, sock)
}

func serveFakeAt(t testing.TB, f *fake, sock string) func() {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.MaxRecvMsgSize(16<<20), grpc.MaxSendMsgSize(16<<20))
	runtimeapi.RegisterRuntimeServiceServer(g, f)
	runtimeapi.RegisterImageServiceServer(g, f)
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return g.Stop
}
