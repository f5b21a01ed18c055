package cri_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/policy"
	"github.com/lf-edge/evelet/version"
)

type rpcCase struct {
	method string
	req    proto.Message
	call   func(ctx context.Context, e *env) (proto.Message, error)
}

// rt and im build a case from a client method expression, so each request
// is written once and the call is type-checked.
func rt[Req, Resp proto.Message](method string, fn func(runtimeapi.RuntimeServiceClient, context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) rpcCase {
	return rpcCase{method, req, func(ctx context.Context, e *env) (proto.Message, error) { return fn(e.rt, ctx, req) }}
}

func im[Req, Resp proto.Message](method string, fn func(runtimeapi.ImageServiceClient, context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) rpcCase {
	return rpcCase{method, req, func(ctx context.Context, e *env) (proto.Message, error) { return fn(e.im, ctx, req) }}
}

type rs = runtimeapi.RuntimeServiceClient
type is = runtimeapi.ImageServiceClient

// forwarded lists every unary RPC that evelet passes through unchanged
// (all but Version, which evelet answers itself), with a recognisable request.
var forwarded = []rpcCase{
	rt("RunPodSandbox", rs.RunPodSandbox, &runtimeapi.RunPodSandboxRequest{
		Config: &runtimeapi.PodSandboxConfig{
			Metadata: &runtimeapi.PodSandboxMetadata{Name: "web", Uid: "uid-1", Namespace: "default", Attempt: 2},
			Hostname: "web-0", LogDirectory: "/var/log/pods/x", Labels: map[string]string{"app": "web"},
		},
		RuntimeHandler: "runc",
	}),
	rt("StopPodSandbox", rs.StopPodSandbox, &runtimeapi.StopPodSandboxRequest{PodSandboxId: "sb-stop"}),
	rt("RemovePodSandbox", rs.RemovePodSandbox, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: "sb-rm"}),
	rt("PodSandboxStatus", rs.PodSandboxStatus, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: "sb-st", Verbose: true}),
	rt("ListPodSandbox", rs.ListPodSandbox, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY}, LabelSelector: map[string]string{"a": "b"}}}),
	rt("CreateContainer", rs.CreateContainer, &runtimeapi.CreateContainerRequest{
		PodSandboxId: "sb-cc",
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"}, Image: &runtimeapi.ImageSpec{Image: "example.com/app:1"}, Args: []string{"-v"},
			// What the kubelet always sends, and the guardrails require.
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				MaskedPaths: policy.BaselineMaskedPaths(), ReadonlyPaths: policy.BaselineReadonlyPaths()}}},
		SandboxConfig: &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "web"}},
	}),
	rt("StartContainer", rs.StartContainer, &runtimeapi.StartContainerRequest{ContainerId: "ctr-start"}),
	rt("StopContainer", rs.StopContainer, &runtimeapi.StopContainerRequest{ContainerId: "ctr-stop", Timeout: 30}),
	rt("RemoveContainer", rs.RemoveContainer, &runtimeapi.RemoveContainerRequest{ContainerId: "ctr-rm"}),
	rt("ListContainers", rs.ListContainers, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: "sb-1"}}),
	rt("ContainerStatus", rs.ContainerStatus, &runtimeapi.ContainerStatusRequest{ContainerId: "ctr-st", Verbose: true}),
	rt("UpdateContainerResources", rs.UpdateContainerResources, &runtimeapi.UpdateContainerResourcesRequest{
		ContainerId: "ctr-upd", Linux: &runtimeapi.LinuxContainerResources{CpuShares: 512, MemoryLimitInBytes: 1 << 30}}),
	rt("ReopenContainerLog", rs.ReopenContainerLog, &runtimeapi.ReopenContainerLogRequest{ContainerId: "ctr-log"}),
	rt("ExecSync", rs.ExecSync, &runtimeapi.ExecSyncRequest{ContainerId: "ctr-es", Cmd: []string{"echo", "hi"}, Timeout: 5}),
	rt("Exec", rs.Exec, &runtimeapi.ExecRequest{ContainerId: "ctr-exec", Cmd: []string{"sh"}, Tty: true, Stdin: true, Stdout: true}),
	rt("Attach", rs.Attach, &runtimeapi.AttachRequest{ContainerId: "ctr-att", Stdin: true, Stdout: true}),
	rt("PortForward", rs.PortForward, &runtimeapi.PortForwardRequest{PodSandboxId: "sb-pf", Port: []int32{8080}}),
	rt("ContainerStats", rs.ContainerStats, &runtimeapi.ContainerStatsRequest{ContainerId: "ctr-stats"}),
	rt("ListContainerStats", rs.ListContainerStats, &runtimeapi.ListContainerStatsRequest{Filter: &runtimeapi.ContainerStatsFilter{Id: "ctr-ls"}}),
	rt("PodSandboxStats", rs.PodSandboxStats, &runtimeapi.PodSandboxStatsRequest{PodSandboxId: "sb-stats"}),
	rt("ListPodSandboxStats", rs.ListPodSandboxStats, &runtimeapi.ListPodSandboxStatsRequest{Filter: &runtimeapi.PodSandboxStatsFilter{Id: "sb-ls"}}),
	rt("UpdateRuntimeConfig", rs.UpdateRuntimeConfig, &runtimeapi.UpdateRuntimeConfigRequest{
		RuntimeConfig: &runtimeapi.RuntimeConfig{NetworkConfig: &runtimeapi.NetworkConfig{PodCidr: "10.244.3.0/24"}}}),
	rt("Status", rs.Status, &runtimeapi.StatusRequest{Verbose: true}),
	rt("CheckpointContainer", rs.CheckpointContainer, &runtimeapi.CheckpointContainerRequest{ContainerId: "ctr-cp", Location: "/tmp/cp.tar", Timeout: 9}),
	rt("ListMetricDescriptors", rs.ListMetricDescriptors, &runtimeapi.ListMetricDescriptorsRequest{}),
	rt("ListPodSandboxMetrics", rs.ListPodSandboxMetrics, &runtimeapi.ListPodSandboxMetricsRequest{}),
	rt("RuntimeConfig", rs.RuntimeConfig, &runtimeapi.RuntimeConfigRequest{}),
	rt("UpdatePodSandboxResources", rs.UpdatePodSandboxResources, &runtimeapi.UpdatePodSandboxResourcesRequest{
		PodSandboxId: "sb-res", Resources: &runtimeapi.LinuxContainerResources{CpuQuota: 50000}}),
	im("ListImages", is.ListImages, &runtimeapi.ListImagesRequest{Filter: &runtimeapi.ImageFilter{Image: &runtimeapi.ImageSpec{Image: "example.com/app"}}}),
	im("ImageStatus", is.ImageStatus, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "example.com/app:1"}, Verbose: true}),
	im("PullImage", is.PullImage, &runtimeapi.PullImageRequest{
		Image: &runtimeapi.ImageSpec{Image: "example.com/app:2"}, Auth: &runtimeapi.AuthConfig{Username: "u", Password: "p"}}),
	im("RemoveImage", is.RemoveImage, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: "sha256:ddd"}}),
	im("ImageFsInfo", is.ImageFsInfo, &runtimeapi.ImageFsInfoRequest{}),
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestEveryRPCIsCovered(t *testing.T) {
	have := map[string]bool{"Version": true, "GetContainerEvents": true}
	for _, c := range forwarded {
		have[c.method] = true
	}
	for _, desc := range []grpc.ServiceDesc{runtimeapi.RuntimeService_ServiceDesc, runtimeapi.ImageService_ServiceDesc} {
		for _, m := range desc.Methods {
			if !have[m.MethodName] {
				t.Errorf("%s/%s has no forwarding test", desc.ServiceName, m.MethodName)
			}
		}
		for _, s := range desc.Streams {
			if !have[s.StreamName] {
				t.Errorf("%s/%s has no forwarding test", desc.ServiceName, s.StreamName)
			}
		}
	}
}

func TestForwardsRequestAndResponse(t *testing.T) {
	e := newEnv(t)
	for _, c := range forwarded {
		t.Run(c.method, func(t *testing.T) {
			e.fake.reset()
			resp, err := c.call(ctx(t), e)
			if err != nil {
				t.Fatalf("%s: %v", c.method, err)
			}
			if got := e.fake.last(c.method); !proto.Equal(got, c.req) {
				t.Errorf("backend got %v, want %v", got, c.req)
			}
			if want := canned[c.method]; !proto.Equal(resp, want) {
				t.Errorf("response %v, want the backend's %v", resp, want)
			}
			// With one backend there is nothing to route: no ownership probes.
			if n := e.fake.total(); n != 1 {
				t.Errorf("backend saw %d calls, want just this one", n)
			}
		})
	}
}

func TestBackendErrorsPassThrough(t *testing.T) {
	e := newEnv(t)
	codesToTry := []codes.Code{codes.NotFound, codes.Unimplemented, codes.InvalidArgument, codes.DeadlineExceeded}
	for i, c := range forwarded {
		t.Run(c.method, func(t *testing.T) {
			code := codesToTry[i%len(codesToTry)]
			switch c.method {
			case "StopPodSandbox", "RemovePodSandbox", "StopContainer", "RemoveContainer":
				if code != codes.NotFound {
					break
				}
				code = codes.Unavailable // NotFound means success there (TestStopRemoveAreIdempotent)
			}
			msg := "x " + c.method + ": kept verbatim"
			e.fake.setErr(c.method, status.Error(code, msg))
			_, err := c.call(ctx(t), e)
			st, _ := status.FromError(err)
			if st.Code() != code || st.Message() != msg {
				t.Errorf("got %v, want code %v message %q", err, code, msg)
			}
		})
	}
	t.Run("NotFound", func(t *testing.T) {
		e.fake.setErr("ContainerStatus", status.Error(codes.NotFound, "x"))
		_, err := e.rt.ContainerStatus(ctx(t), &runtimeapi.ContainerStatusRequest{ContainerId: "gone"})
		if st, _ := status.FromError(err); st.Code() != codes.NotFound || st.Message() != "x" {
			t.Errorf("got %v, want NotFound x", err)
		}
	})
}

func TestVersionReportsEvelet(t *testing.T) {
	e := newEnv(t)
	req := &runtimeapi.VersionRequest{Version: "v1"}
	got, err := e.rt.Version(ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	want := &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "evelet", RuntimeVersion: version.Version, RuntimeApiVersion: "v1"}
	if !proto.Equal(got, want) {
		t.Errorf("Version = %v, want %v", got, want)
	}
	if last := e.fake.last("Version"); !proto.Equal(last, req) {
		t.Errorf("backend Version got %v, want the kubelet's request %v", last, req)
	}
}

func TestVersionFailsWhenBackendFails(t *testing.T) {
	e := newEnv(t)
	e.fake.setErr("Version", status.Error(codes.Unavailable, "containerd is restarting"))
	_, err := e.rt.Version(ctx(t), &runtimeapi.VersionRequest{})
	if st, _ := status.FromError(err); st.Code() != codes.Unavailable || st.Message() != "containerd is restarting" {
		t.Errorf("got %v, want the backend's Unavailable", err)
	}

	// And when the backend is gone altogether.
	e.stopFake()
	_, err = e.rt.Version(ctx(t), &runtimeapi.VersionRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("with the backend down, got %v, want Unavailable", err)
	}
}

func TestBackendRestartIsPickedUp(t *testing.T) {
	e := newEnv(t)
	e.stopFake()
	if _, err := e.rt.Version(ctx(t), &runtimeapi.VersionRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("backend down: %v, want Unavailable", err)
	}
	serveFakeAt(t, newFake(), e.fakeSock) // containerd comes back on the same socket
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := e.rt.Version(ctx(t), &runtimeapi.VersionRequest{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("evelet did not reconnect to the restarted backend: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestGetContainerEventsRelaysThenEnds(t *testing.T) {
	e := newEnv(t)
	e.fake.events = []*runtimeapi.ContainerEventResponse{
		{ContainerId: "c1", ContainerEventType: runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT, CreatedAt: 1},
		{ContainerId: "c1", ContainerEventType: runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT, CreatedAt: 2,
			PodSandboxStatus: &runtimeapi.PodSandboxStatus{Id: "sb-1"}},
		{ContainerId: "c1", ContainerEventType: runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT, CreatedAt: 3,
			ContainersStatuses: []*runtimeapi.ContainerStatus{{Id: "c1", ExitCode: 137}}},
	}
	stream, err := e.rt.GetContainerEvents(ctx(t), &runtimeapi.GetEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []*runtimeapi.ContainerEventResponse
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("after %d events: %v", len(got), err)
		}
		got = append(got, ev)
	}
	if len(got) != len(e.fake.events) {
		t.Fatalf("got %d events, want %d", len(got), len(e.fake.events))
	}
	for i := range got {
		if !proto.Equal(got[i], e.fake.events[i]) {
			t.Errorf("event %d = %v, want %v", i, got[i], e.fake.events[i])
		}
	}
}

func TestGetContainerEventsError(t *testing.T) {
	e := newEnv(t)
	// containerd before 1.7 answers Unimplemented; the kubelet then falls back to polling.
	e.fake.setErr("GetContainerEvents", status.Error(codes.Unimplemented, "no events"))
	stream, err := e.rt.GetContainerEvents(ctx(t), &runtimeapi.GetEventsRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if st, _ := status.FromError(err); st.Code() != codes.Unimplemented || st.Message() != "no events" {
		t.Errorf("got %v, want Unimplemented no events", err)
	}
}

func TestGetContainerEventsEndsWhenClientGoes(t *testing.T) {
	e := newEnv(t)
	// Like containerd's, this backend stream never ends on its own.
	e.fake.mu.Lock()
	e.fake.hold = true
	e.fake.events = []*runtimeapi.ContainerEventResponse{{ContainerId: "c1"}}
	e.fake.mu.Unlock()

	c, cancel := context.WithCancel(ctx(t))
	stream, err := e.rt.GetContainerEvents(c, &runtimeapi.GetEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := stream.Recv(); err != nil || ev.GetContainerId() != "c1" {
		t.Fatalf("first event: %v, %v", ev, err)
	}
	if n := e.fake.openStreams.Load(); n != 1 {
		t.Fatalf("backend has %d open event streams, want 1", n)
	}
	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("after cancel got %v, want Canceled", err)
	}
	// evelet must close its backend stream too, or every kubelet restart leaks one.
	deadline := time.Now().Add(5 * time.Second)
	for e.fake.openStreams.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("backend event stream still open after the kubelet went away")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLargeMessages(t *testing.T) {
	e := newEnv(t)
	// Above grpc's 4 MiB default, below the kubelet's 16 MiB.
	big := &runtimeapi.ListImagesResponse{Images: []*runtimeapi.Image{{Id: "sha256:big", RepoTags: []string{strings.Repeat("x", 10<<20)}}}}
	e.fake.setResponse("ListImages", big)
	got, err := e.im.ListImages(ctx(t), &runtimeapi.ListImagesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, big) {
		t.Error("large response mangled")
	}
}
