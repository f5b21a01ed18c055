package vm

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestDiskCachePruned: an extracted disk stays while a VM container uses it
// or containerd still has its image, and goes once neither holds: after
// the image's removal (the CRI image service tells the backend), after the
// last container's removal, and at the start of a backend (an agent that
// was down when the image went). Real containerd and qemu-img; no guest
// boots.
func TestDiskCachePruned(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	tars := t.TempDir()
	refs := []string{"evelet.local/h4-gc-a:1", "evelet.local/h4-gc-b:1", "evelet.local/h4-gc-c:1"}
	var imgs []string
	for _, ref := range refs {
		imgs = append(imgs, diskImage(t, tars, ref, map[string][]byte{"disk/boot.raw": bootSector(ref, true)}))
	}
	if err := h.ctrd.ImportImages(ctx, imgs...); err != nil {
		t.Fatal(err)
	}
	h.noKVM = true
	b := h.backend()
	create := func(name, ref string) (string, string) {
		t.Helper()
		cr, err := b.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: h.sandbox(b, name), Config: containerConfig("vm", ref, 0)})
		if err != nil {
			t.Fatal(err)
		}
		c, err := b.store.container(cr.ContainerId)
		if err != nil {
			t.Fatal(err)
		}
		return cr.ContainerId, filepath.Dir(c.Boot.Disk)
	}
	removeContainer := func(id string) {
		t.Helper()
		if _, err := b.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
			t.Fatal(err)
		}
	}
	removeImage := func(ref string) {
		t.Helper()
		if _, err := b.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
			t.Fatal(err)
		}
	}
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	waitGone := func(p, why string) {
		t.Helper()
		err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) { return !exists(p), nil })
		if err != nil {
			t.Fatalf("%s: %s still there", why, p)
		}
	}

	ctrA, dirA := create("gc-a", refs[0])
	ctrB, dirB := create("gc-b", refs[1])
	if filepath.Dir(dirA) != filepath.Join(h.stateDir, imagesDir) || dirA == dirB {
		t.Fatalf("disks at %s and %s, want two entries under %s", dirA, dirB, filepath.Join(h.stateDir, imagesDir))
	}
	// What a crash mid-extraction leaves: without a checkpoint, with the
	// checkpoint of an image containerd does not have, and a resumable one
	// of C's image, which containerd has (extract.go).
	cut := func(hex string, checkpoint bool) string {
		p := filepath.Join(h.stateDir, imagesDir, hex+".tmp")
		if err := os.MkdirAll(filepath.Join(p, tmpFilesDir), 0o700); err != nil {
			t.Fatal(err)
		}
		if checkpoint {
			os.WriteFile(filepath.Join(p, progressFile), []byte(`{"version":1,"manifest":"`+hex+`"}`), 0o600)
		}
		return p
	}
	partial := cut("0123abcd", false)
	gone := cut("4567cdef", true)
	hC, _, err := b.images.manifest(ctx, refs[2])
	if err != nil {
		t.Fatal(err)
	}
	resumableC := cut(hC.Hex, true)

	// B's container goes but its image stays: the disk is kept.
	removeContainer(ctrB)
	if _, err := b.pruneDisks(ctx); err != nil {
		t.Fatal(err)
	}
	if !exists(dirB) {
		t.Errorf("disk of an image containerd still has was removed")
	}
	if exists(partial) || exists(gone) {
		t.Errorf("half-extracted %s or %s kept", partial, gone)
	}
	if !exists(resumableC) {
		t.Errorf("the resumable extraction of an image containerd has was removed")
	}

	// A's image goes while its VM container exists: the disk is kept...
	removeImage(refs[0])
	b.ImageRemoved(ctx)
	if !exists(dirA) {
		t.Fatalf("disk of a VM container removed with its image")
	}
	// ...until the container goes.
	removeContainer(ctrA)
	waitGone(dirA, "image and container removed")

	// B's image goes, no container uses it: gone when the service says so.
	removeImage(refs[1])
	b.ImageRemoved(ctx)
	if exists(dirB) {
		t.Errorf("disk of a removed, unused image kept after ImageRemoved")
	}

	// C's image goes while no backend listens; the next backend sweeps.
	ctrC, dirC := create("gc-c", refs[2])
	if exists(resumableC) {
		t.Errorf("%s left after C's extraction", resumableC)
	}
	removeContainer(ctrC)
	if _, err := b.pruneDisks(ctx); err != nil || !exists(dirC) {
		t.Fatalf("disk of an image containerd still has: exists %v, err %v", exists(dirC), err)
	}
	removeImage(refs[2])
	b.Close()
	b = h.backend()
	waitGone(dirC, "a new backend after the image was removed")
}
