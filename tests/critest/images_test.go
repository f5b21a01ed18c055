package critest

import (
	"context"
	"net/http"
	"os"
	"strings"
	"testing"
)

// TestImagesServed: the images build and the loopback registry serves them
// under the repository paths containerd asks a mirror for; tags that
// critest expects to be one image share a digest, the others do not.
func TestImagesServed(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs a static busybox at /bin/busybox (apt-get install busybox-static)")
	}
	fs, err := newRootfs("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := buildImages(context.Background(), fs, "", []byte("#!/bin/sh\n"))
	if err != nil {
		t.Fatal(err)
	}
	reg, err := StartRegistry()
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	for ref, img := range imgs {
		if err := reg.Push(ref, img); err != nil {
			t.Fatal(err)
		}
	}
	digest := func(repo, tag string) string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodHead, reg.URL()+"/v2/"+repo+"/manifests/"+tag, nil)
		req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s:%s: %s", repo, tag, resp.Status)
		}
		return resp.Header.Get("Docker-Content-Digest")
	}
	if d := digest("e2e-test-images/busybox", "1.29-2"); !strings.HasPrefix(d, "sha256:") {
		t.Errorf("busybox digest %q", d)
	}
	if a, b := digest("k8s-staging-cri-tools/test-image-tags", "1"), digest("k8s-staging-cri-tools/test-image-tags", "3"); a != b {
		t.Errorf("test-image-tags:1 and :3 differ (%s, %s); critest expects one image", a, b)
	}
	if a, b := digest("k8s-staging-cri-tools/test-image-1", "latest"), digest("k8s-staging-cri-tools/test-image-2", "latest"); a == b {
		t.Errorf("test-image-1 and -2 are the same image; critest expects different ones")
	}
	img := imgs[criTools+"test-image-user-username-group:latest"]
	cf, err := img.ConfigFile()
	if err != nil || cf.Config.User != "www-data:1004" {
		t.Errorf("username-group image user = %q, %v", cf.Config.User, err)
	}
}
