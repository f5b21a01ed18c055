package cri_test

import (
	"errors"
	"io"
	"path/filepath"
	"slices"
	"sort"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri"
)

// twoBackends is evelet with containerd as the default backend and a second
// backend for the "eve-vm" RuntimeClass handler, standing in for the VM backend.
type twoBackends struct {
	ctd, vm *fake
	rt      runtimeapi.RuntimeServiceClient
	im      runtimeapi.ImageServiceClient
}

func newTwoBackends(t *testing.T) *twoBackends {
	tb := &twoBackends{ctd: newFake(), vm: newFake()}
	tb.ctd.owned = map[string]bool{"sb-c": true, "ctr-c": true}
	tb.vm.owned = map[string]bool{"sb-vm": true, "ctr-vm": true}
	ctdSock, _ := serveFake(t, tb.ctd)
	vmSock, _ := serveFake(t, tb.vm)
	sock := filepath.Join(shortDir(t), "cri.sock")
	startServer(t, cri.Config{
		Socket:   sock,
		Backend:  dialBackend(t, ctdSock),
		Handlers: map[string]cri.Backend{"eve-vm": dialBackend(t, vmSock)},
		Log:      quietLog(),
	})
	conn := dialClient(t, sock)
	tb.rt = runtimeapi.NewRuntimeServiceClient(conn)
	tb.im = runtimeapi.NewImageServiceClient(conn)
	tb.ctd.reset()
	tb.vm.reset()
	return tb
}

func TestRouterRunPodSandboxByHandler(t *testing.T) {
	tb := newTwoBackends(t)
	for handler, want := range map[string]*fake{"eve-vm": tb.vm, "runc": tb.ctd, "": tb.ctd, "unknown": tb.ctd} {
		tb.ctd.reset()
		tb.vm.reset()
		if _, err := tb.rt.RunPodSandbox(ctx(t), &runtimeapi.RunPodSandboxRequest{RuntimeHandler: handler}); err != nil {
			t.Fatal(err)
		}
		if want.count("RunPodSandbox") != 1 || tb.ctd.count("RunPodSandbox")+tb.vm.count("RunPodSandbox") != 1 {
			t.Errorf("handler %q went to the wrong backend", handler)
		}
	}
}

func TestRouterByOwner(t *testing.T) {
	tb := newTwoBackends(t)
	t.Run("sandbox", func(t *testing.T) {
		for id, want := range map[string]*fake{"sb-vm": tb.vm, "sb-c": tb.ctd, "sb-unclaimed": tb.ctd} {
			tb.ctd.reset()
			tb.vm.reset()
			if _, err := tb.rt.StopPodSandbox(ctx(t), &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
				t.Fatal(err)
			}
			if want.count("StopPodSandbox") != 1 || tb.ctd.count("StopPodSandbox")+tb.vm.count("StopPodSandbox") != 1 {
				t.Errorf("StopPodSandbox(%s) went to the wrong backend", id)
			}
		}
	})
	t.Run("container of a VM sandbox", func(t *testing.T) {
		tb.vm.reset()
		if _, err := tb.rt.CreateContainer(ctx(t), &runtimeapi.CreateContainerRequest{PodSandboxId: "sb-vm"}); err != nil {
			t.Fatal(err)
		}
		if tb.vm.count("CreateContainer") != 1 {
			t.Error("CreateContainer in a VM sandbox did not reach the VM backend")
		}
	})
	t.Run("container", func(t *testing.T) {
		for id, want := range map[string]*fake{"ctr-vm": tb.vm, "ctr-c": tb.ctd} {
			tb.ctd.reset()
			tb.vm.reset()
			if _, err := tb.rt.ExecSync(ctx(t), &runtimeapi.ExecSyncRequest{ContainerId: id}); err != nil {
				t.Fatal(err)
			}
			if want.count("ExecSync") != 1 || tb.ctd.count("ExecSync")+tb.vm.count("ExecSync") != 1 {
				t.Errorf("ExecSync(%s) went to the wrong backend", id)
			}
		}
	})
	t.Run("nobody's container is the default backend's NotFound", func(t *testing.T) {
		_, err := tb.rt.ContainerStatus(ctx(t), &runtimeapi.ContainerStatusRequest{ContainerId: "ctr-gone"})
		if st, _ := status.FromError(err); st.Code() != codes.NotFound || st.Message() != "container ctr-gone not found" {
			t.Errorf("got %v, want containerd's NotFound", err)
		}
	})
	t.Run("a failing probe is not a guess", func(t *testing.T) {
		tb.ctd.reset()
		tb.vm.setErr("PodSandboxStatus", status.Error(codes.Unavailable, "vm backend down"))
		defer tb.vm.setErr("PodSandboxStatus", nil)
		_, err := tb.rt.RemovePodSandbox(ctx(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: "sb-c"})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("got %v, want the probe's Unavailable", err)
		}
		if tb.ctd.count("RemovePodSandbox") != 0 {
			t.Error("RemovePodSandbox was sent to containerd although ownership was unknown")
		}
	})
}

func TestRouterMergesLists(t *testing.T) {
	tb := newTwoBackends(t)
	tb.vm.setResponse("ListPodSandbox", &runtimeapi.ListPodSandboxResponse{Items: []*runtimeapi.PodSandbox{{Id: "sb-vm", RuntimeHandler: "eve-vm"}}})
	got, err := tb.rt.ListPodSandbox(ctx(t), &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, it := range got.Items {
		ids = append(ids, it.Id)
	}
	sort.Strings(ids)
	if want := []string{"sb-1", "sb-2", "sb-vm"}; !slices.Equal(ids, want) {
		t.Errorf("ListPodSandbox ids %v, want %v", ids, want)
	}

	// Same names from both backends are listed once.
	d, err := tb.rt.ListMetricDescriptors(ctx(t), &runtimeapi.ListMetricDescriptorsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Descriptors) != 1 {
		t.Errorf("got %d descriptors, want 1 (deduplicated)", len(d.Descriptors))
	}

	// A backend failing fails the list: a partial list would look like dead pods.
	tb.vm.setErr("ListContainers", status.Error(codes.Internal, "boom"))
	if _, err := tb.rt.ListContainers(ctx(t), &runtimeapi.ListContainersRequest{}); status.Code(err) != codes.Internal {
		t.Errorf("ListContainers with a failing backend: %v, want Internal", err)
	}
}

func TestRouterRuntimeWideCalls(t *testing.T) {
	tb := newTwoBackends(t)
	if _, err := tb.rt.UpdateRuntimeConfig(ctx(t), &runtimeapi.UpdateRuntimeConfigRequest{}); err != nil {
		t.Fatal(err)
	}
	if tb.ctd.count("UpdateRuntimeConfig") != 1 || tb.vm.count("UpdateRuntimeConfig") != 1 {
		t.Error("UpdateRuntimeConfig must reach every backend")
	}
	st, err := tb.rt.Status(ctx(t), &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(st, canned["Status"]) || tb.vm.count("Status") != 0 {
		t.Error("Status must come from the default backend")
	}
	if _, err := tb.im.ListImages(ctx(t), &runtimeapi.ListImagesRequest{}); err != nil {
		t.Fatal(err)
	}
	if tb.ctd.count("ListImages") != 1 || tb.vm.count("ListImages") != 0 {
		t.Error("images must come from the default backend")
	}
}

func TestRouterMergesEvents(t *testing.T) {
	tb := newTwoBackends(t)
	tb.ctd.events = []*runtimeapi.ContainerEventResponse{{ContainerId: "ctr-c"}, {ContainerId: "ctr-c2"}}
	tb.vm.events = []*runtimeapi.ContainerEventResponse{{ContainerId: "ctr-vm"}}
	stream, err := tb.rt.GetContainerEvents(ctx(t), &runtimeapi.GetEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, ev.ContainerId)
	}
	sort.Strings(ids)
	if want := []string{"ctr-c", "ctr-c2", "ctr-vm"}; !slices.Equal(ids, want) {
		t.Errorf("events %v, want %v", ids, want)
	}
}
