package vm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// gatedNetwork holds every Setup until its gate is closed: a RunPodSandbox
// the kubelet gave up waiting for.
type gatedNetwork struct {
	noNetwork
	entered chan struct{}
	gate    chan struct{}
}

func (g *gatedNetwork) Setup(ctx context.Context, id string, p PodMeta) (*Attachment, error) {
	g.entered <- struct{}{}
	<-g.gate
	return g.noNetwork.Setup(ctx, id, p)
}

func sandboxReq(name string) *runtimeapi.RunPodSandboxRequest {
	return &runtimeapi.RunPodSandboxRequest{RuntimeHandler: Handler, Config: &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "default", Uid: "uid-" + name}}}
}

// TestSandboxNameReserved: a retried RunPodSandbox, while the first still
// runs or after it succeeded, never makes a second VM pod (issue 21 item
// 13); once the sandbox is removed the name is free again.
func TestSandboxNameReserved(t *testing.T) {
	b := lightBackend(t, slowSupervisor(0))
	g := &gatedNetwork{entered: make(chan struct{}, 4), gate: make(chan struct{})}
	b.net = g
	ctx := context.Background()
	var first *runtimeapi.RunPodSandboxResponse
	var firstErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		first, firstErr = b.RunPodSandbox(ctx, sandboxReq("p"))
	}()
	<-g.entered
	retried := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := b.RunPodSandbox(ctx, sandboxReq("p"))
		retried <- err
	}()
	select {
	case err := <-retried:
		if status.Code(err) != codes.AlreadyExists || !strings.Contains(err.Error(), "reserved") {
			t.Errorf("retry while the first RunPodSandbox runs: %v, want AlreadyExists (name reserved)", err)
		}
	case <-g.entered:
		t.Error("a retry while the first RunPodSandbox runs went on to set up a second pod network")
	}
	close(g.gate)
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	_, err := b.RunPodSandbox(ctx, sandboxReq("p"))
	if status.Code(err) != codes.AlreadyExists || !strings.Contains(err.Error(), first.PodSandboxId) {
		t.Errorf("retry after the first succeeded: %v, want AlreadyExists naming %s", err, first.PodSandboxId)
	}
	other := sandboxReq("p")
	other.Config.Metadata.Attempt = 1
	second, err := b.RunPodSandbox(ctx, other)
	if err != nil {
		t.Fatalf("the next attempt: %v", err)
	}
	l, err := b.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil || len(l.Items) != 2 {
		t.Fatalf("sandboxes %v %v, want the two attempts", l.GetItems(), err)
	}
	for _, id := range []string{first.PodSandboxId, second.PodSandboxId} {
		if _, err := b.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.RunPodSandbox(ctx, sandboxReq("p")); err != nil {
		t.Errorf("the name after its sandbox was removed: %v", err)
	}
}

// diskDirBackend resolves every image to a directory with a small raw disk.
func diskDirBackend(t *testing.T) *Backend {
	b := lightBackend(t, slowSupervisor(0))
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "boot.raw"), bootSector("x", true), 0o644); err != nil {
		t.Fatal(err)
	}
	b.resolveDisk = func(context.Context, string) (string, error) { return dir, nil }
	return b
}

// TestContainerNameReserved: a retried CreateContainer (same name and
// attempt) fails instead of making a second VM.
func TestContainerNameReserved(t *testing.T) {
	b := diskDirBackend(t)
	ctx := context.Background()
	sb, err := b.RunPodSandbox(ctx, sandboxReq("p"))
	if err != nil {
		t.Fatal(err)
	}
	req := &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: containerConfig("vm", "disk:1", 0)}
	c1, err := b.CreateContainer(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.CreateContainer(ctx, req)
	if status.Code(err) != codes.AlreadyExists || !strings.Contains(err.Error(), c1.ContainerId) {
		t.Errorf("retried CreateContainer: %v, want AlreadyExists naming %s", err, c1.ContainerId)
	}
	l, err := b.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil || len(l.Containers) != 1 {
		t.Errorf("containers %v %v, want one", l.GetContainers(), err)
	}
}

// TestUnreadableStateIsSkipped: one corrupt state file hides only its own
// sandbox or container from the listings, not every pod (issue 21 item 13).
func TestUnreadableStateIsSkipped(t *testing.T) {
	b := diskDirBackend(t)
	ctx := context.Background()
	good, err := b.RunPodSandbox(ctx, sandboxReq("good"))
	if err != nil {
		t.Fatal(err)
	}
	bad, err := b.RunPodSandbox(ctx, sandboxReq("bad"))
	if err != nil {
		t.Fatal(err)
	}
	gc, err := b.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: good.PodSandboxId, Config: containerConfig("vm", "disk:1", 0)})
	if err != nil {
		t.Fatal(err)
	}
	bc, err := b.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: bad.PodSandboxId, Config: containerConfig("vm", "disk:1", 0)})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(b.store.sandboxDir(bad.PodSandboxId), sandboxFile), []byte("{\"id\": tru"), 0o600)
	os.WriteFile(filepath.Join(b.store.containerDir(bc.ContainerId), containerFile), []byte("\x00\x00"), 0o600)

	sl, err := b.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil || len(sl.Items) != 1 || sl.Items[0].Id != good.PodSandboxId {
		t.Errorf("ListPodSandbox with one corrupt sandbox: %v %v, want the good one", sl.GetItems(), err)
	}
	cl, err := b.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil || len(cl.Containers) != 1 || cl.Containers[0].Id != gc.ContainerId {
		t.Errorf("ListContainers with one corrupt container: %v %v, want the good one", cl.GetContainers(), err)
	}
	if _, err := b.ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{}); err != nil {
		t.Errorf("ListContainerStats: %v", err)
	}
	if _, err := b.ListPodSandboxStats(ctx, &runtimeapi.ListPodSandboxStatsRequest{}); err != nil {
		t.Errorf("ListPodSandboxStats: %v", err)
	}
}

// TestOverlayCountsAsEphemeralStorage: what the guest wrote into its
// overlay is the container's writable layer in the CRI stats, which the
// kubelet counts against the pod's ephemeral-storage limit (issue 21 item
// 9: a guest wrote 1 GiB and /stats/summary said 4 KiB).
func TestOverlayCountsAsEphemeralStorage(t *testing.T) {
	b := diskDirBackend(t)
	ctx := context.Background()
	sb, err := b.RunPodSandbox(ctx, sandboxReq("p"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := b.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: containerConfig("vm", "disk:1", 0)})
	if err != nil {
		t.Fatal(err)
	}
	// What a guest's writes do to the overlay: allocated clusters.
	f, err := os.OpenFile(filepath.Join(b.store.containerDir(c.ContainerId), overlayFile), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	const written = 8 << 20
	if _, err := f.Write(make([]byte, written)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	st, err := b.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: c.ContainerId})
	if err != nil {
		t.Fatal(err)
	}
	if used := st.GetStats().GetWritableLayer().GetUsedBytes().GetValue(); used < written {
		t.Errorf("writable layer %d bytes after the guest wrote %d into its overlay", used, written)
	}
}
