package criconformance

import (
	"io"
	"log"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/tests/internal/ociregistry"
)

func TestImages(t *testing.T) {
	needEnv(t)
	all, err := env.is.ListImages(ctx(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	var tags []string
	for _, img := range all {
		tags = append(tags, img.GetRepoTags()...)
	}
	for _, ref := range []string{images.BusyboxRef, images.PauseRef} {
		if !slices.Contains(tags, ref) {
			t.Errorf("ListImages lacks %s: %v", ref, tags)
		}
	}
	// containerd 1.6 ignores the filter; evelet must answer the same.
	filter := &runtimeapi.ImageFilter{Image: &runtimeapi.ImageSpec{Image: images.BusyboxRef}}
	only, err := env.is.ListImages(ctx(t), filter)
	direct, derr := env.directIm.ListImages(ctx(t), &runtimeapi.ListImagesRequest{Filter: filter})
	if err != nil || derr != nil || len(only) != len(direct.GetImages()) {
		t.Errorf("ListImages filtered: evelet %d images (%v), containerd %d (%v)", len(only), err, len(direct.GetImages()), derr)
	}

	st, err := env.is.ImageStatus(ctx(t), &runtimeapi.ImageSpec{Image: images.BusyboxRef}, true)
	if err != nil {
		t.Fatal(err)
	}
	if img := st.GetImage(); img.GetId() == "" || img.GetSize() == 0 || !slices.Contains(img.GetRepoTags(), images.BusyboxRef) {
		t.Errorf("ImageStatus = %v", img)
	}
	if len(st.GetInfo()) == 0 {
		t.Error("verbose ImageStatus has no info")
	}
	st, err = env.is.ImageStatus(ctx(t), &runtimeapi.ImageSpec{Image: "localhost/evelet/not-there:1"}, false)
	if err != nil || st.GetImage() != nil {
		t.Errorf("ImageStatus of a missing image: %v, %v; want no image, no error", st, err)
	}

	fs, err := env.is.ImageFsInfo(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	// Usage is sampled periodically by containerd, so it may still be 0.
	if len(fs.GetImageFilesystems()) == 0 || !strings.HasPrefix(fs.GetImageFilesystems()[0].GetFsId().GetMountpoint(), env.ctrd.Dir()) {
		t.Errorf("ImageFsInfo = %v, want the snapshotter under %s", fs, env.ctrd.Dir())
	}
}

// TestPullImage pulls through evelet from a registry on loopback.
// containerd's CRI talks plain HTTP to localhost and 127.0.0.1 registries
// without any configuration, so the harness needs no change for this.
func TestPullImage(t *testing.T) {
	needEnv(t)
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/evelet/pulled:1"

	// A busybox with its own config, so its image ID is its own: removing
	// it must not take the shared busybox image along.
	tag, err := name.NewTag(images.BusyboxRef)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(env.busyboxTar, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg := cf.Config.DeepCopy()
	cfg.Labels = map[string]string{"evelet.test": "criconformance-pull"}
	if img, err = mutate.Config(img, *cfg); err != nil {
		t.Fatal(err)
	}
	if err := ociregistry.Push(srv.URL, "evelet/pulled", "1", img); err != nil {
		t.Fatalf("push to the loopback registry: %v", err)
	}
	wantID, _ := img.ConfigName()

	r := newPod(t, "pull")
	got, err := env.is.PullImage(ctx(t), &runtimeapi.ImageSpec{Image: ref}, nil, r.SandboxConfig())
	if err != nil {
		t.Fatalf("PullImage %s: %v", ref, err)
	}
	if got != wantID.String() {
		t.Errorf("PullImage returned %q, want the image ID %s", got, wantID)
	}
	st, err := env.is.ImageStatus(ctx(t), &runtimeapi.ImageSpec{Image: ref}, false)
	if err != nil || st.GetImage().GetId() != wantID.String() {
		t.Fatalf("ImageStatus after pull: %v, %v", st, err)
	}
	if err := env.is.RemoveImage(ctx(t), &runtimeapi.ImageSpec{Image: ref}); err != nil {
		t.Fatalf("RemoveImage: %v", err)
	}
	if st, err := env.is.ImageStatus(ctx(t), &runtimeapi.ImageSpec{Image: ref}, false); err != nil || st.GetImage() != nil {
		t.Errorf("ImageStatus after RemoveImage: %v, %v", st, err)
	}
	if err := env.is.RemoveImage(ctx(t), &runtimeapi.ImageSpec{Image: ref}); err != nil {
		t.Errorf("RemoveImage is not idempotent: %v", err)
	}
	if st, err := env.is.ImageStatus(ctx(t), &runtimeapi.ImageSpec{Image: images.BusyboxRef}, false); err != nil || st.GetImage() == nil {
		t.Errorf("busybox gone after removing the pulled image: %v, %v", st, err)
	}

	// A pull that fails fails alike through evelet.
	missing := strings.TrimPrefix(srv.URL, "http://") + "/evelet/missing:1"
	_, shimErr := env.is.PullImage(ctx(t), &runtimeapi.ImageSpec{Image: missing}, nil, nil)
	_, directErr := env.directIm.PullImage(ctx(t), &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: missing}})
	if shimErr == nil || status.Code(shimErr) != status.Code(directErr) {
		t.Errorf("pull of a missing image: evelet %v, containerd %v", shimErr, directErr)
	}
}
