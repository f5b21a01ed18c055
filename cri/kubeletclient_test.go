package cri_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"
	"k8s.io/klog/v2"
)

// TestKubeletCRIClient drives evelet with the kubelet's own CRI client, which
// validates the connection with Version on creation and wraps calls its way.
func TestKubeletCRIClient(t *testing.T) {
	e := newEnv(t)
	logger := klog.Background()
	endpoint := "unix://" + e.sock
	rs, err := remote.NewRemoteRuntimeService(endpoint, 5*time.Second, nil, &logger)
	if err != nil {
		t.Fatalf("kubelet runtime client: %v", err)
	}
	is, err := remote.NewRemoteImageService(endpoint, 5*time.Second, nil, &logger)
	if err != nil {
		t.Fatalf("kubelet image client: %v", err)
	}

	v, err := rs.Version(ctx(t), "v1")
	if err != nil || v.RuntimeName != "evelet" {
		t.Errorf("Version = %v, %v", v, err)
	}
	st, err := rs.Status(ctx(t), false)
	if err != nil || !proto.Equal(st, canned["Status"]) {
		t.Errorf("Status = %v, %v", st, err)
	}
	sbs, err := rs.ListPodSandbox(ctx(t), nil)
	if err != nil || len(sbs) != 2 {
		t.Errorf("ListPodSandbox = %v, %v", sbs, err)
	}
	id, err := rs.RunPodSandbox(ctx(t), &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "p", Uid: "u", Namespace: "n"}}, "runc")
	if err != nil || id != "sb-created" {
		t.Errorf("RunPodSandbox = %q, %v", id, err)
	}
	ref, err := is.PullImage(ctx(t), &runtimeapi.ImageSpec{Image: "example.com/app:1"}, nil, nil)
	if err != nil || ref != "sha256:ccc" {
		t.Errorf("PullImage = %q, %v", ref, err)
	}
	fs, err := is.ImageFsInfo(ctx(t))
	if err != nil || !proto.Equal(fs, canned["ImageFsInfo"]) {
		t.Errorf("ImageFsInfo = %v, %v", fs, err)
	}
}
