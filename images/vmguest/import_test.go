package vmguest

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/tests/containerd"
)

// TestImagesImportIntoContainerd imports both images into a real
// containerd as the VM backend's tests do, and finds them through the CRI
// under their references, with a size that holds the guest.
func TestImagesImportIntoContainerd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("starting containerd needs root")
	}
	if _, err := exec.LookPath("containerd"); err != nil {
		t.Skip("containerd is not installed (hack/install-prereqs.sh installs it)")
	}
	imgs := buildImages(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := containerd.Start(ctx, containerd.Options{
		Dir:                 t.TempDir(),
		PodCIDR:             "10.78.0.0/24",
		BridgeName:          "h3ctr0",
		NetworkName:         "h3-vmguest",
		RestrictOOMScoreAdj: true, // the test machines lack CAP_SYS_RESOURCE
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("containerd Stop: %v", err)
		}
	})
	start := time.Now()
	if err := c.ImportImages(ctx, imgs.KernelTar, imgs.DiskTar); err != nil {
		t.Fatal(err)
	}
	t.Logf("imported both images in %v", time.Since(start).Round(time.Millisecond))
	conn, err := c.DialCRI()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	is := runtimeapi.NewImageServiceClient(conn)
	for ref, minSize := range map[string]int64{KernelRef: fileSize(t, imgs.Kernel) + fileSize(t, imgs.Initrd), DiskRef: fileSize(t, imgs.Disk)} {
		st, err := is.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		if err != nil || st.GetImage() == nil {
			t.Fatalf("ImageStatus %s: %v, %v", ref, st, err)
		}
		// The CRI reports the compressed size; gzip shrinks the kernel
		// and the qcow2 only a little.
		if got := int64(st.GetImage().GetSize()); got < minSize/2 {
			t.Errorf("%s: size %d, want about %d", ref, got, minSize)
		}
		t.Logf("%s: %v, %d bytes", ref, st.GetImage().GetRepoTags(), st.GetImage().GetSize())
	}
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}
