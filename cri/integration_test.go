package cri_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri"
	"github.com/lf-edge/evelet/cri/containerd"
	"github.com/lf-edge/evelet/version"
)

// startContainerd runs a private containerd under a temp dir and returns its
// socket. It is stopped by pid when the test ends, pass or fail.
func startContainerd(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("containerd")
	if err != nil {
		t.Skipf("containerd not found: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("containerd not usable: it needs root, and this test is not running as root")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skipf("containerd not usable: runc not found: %v", err)
	}
	dir := shortDir(t) // the socket path must stay under 108 bytes
	sock := filepath.Join(dir, "containerd.sock")
	cniConf := filepath.Join(dir, "cni")
	if err := os.Mkdir(cniConf, 0o755); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
# "opt" would install into /opt/containerd, outside the test's directory.
disabled_plugins = ["io.containerd.internal.v1.opt"]

[grpc]
  address = %q

[plugins."io.containerd.grpc.v1.cri"]
  # Without CAP_SYS_RESOURCE runc cannot lower oom_score_adj and sandboxes fail.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, cniConf)
	configFile := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(configFile, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}

	var logs bytes.Buffer
	cmd := exec.Command(bin, "--config", configFile)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	// Its own process group, so a Ctrl-C of `go test` does not race our stop.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("containerd output:\n%s", logs.String())
		}
	})
	return sock
}

func TestContainerdIntegration(t *testing.T) {
	ctdSock := startContainerd(t)

	dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := containerd.Dial(dctx, "unix://"+ctdSock)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	sock := filepath.Join(shortDir(t), "evelet-cri.sock")
	startServer(t, cri.Config{Socket: sock, Backend: b, Log: quietLog()})
	conn := dialClient(t, sock)
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	im := runtimeapi.NewImageServiceClient(conn)

	v, err := rt.Version(ctx(t), &runtimeapi.VersionRequest{})
	if err != nil {
		t.Fatalf("Version: %v", err)
	}
	if v.RuntimeName != "evelet" || v.RuntimeVersion != version.Version || v.RuntimeApiVersion != "v1" {
		t.Errorf("Version = %v", v)
	}

	st, err := rt.Status(ctx(t), &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	ready := false
	for _, c := range st.GetStatus().GetConditions() {
		if c.Type == runtimeapi.RuntimeReady {
			ready = c.Status
		}
	}
	if !ready {
		t.Errorf("RuntimeReady not true: %v", st)
	}

	if _, err := im.ListImages(ctx(t), &runtimeapi.ListImagesRequest{}); err != nil {
		t.Errorf("ListImages: %v", err)
	}
	fs, err := im.ImageFsInfo(ctx(t), &runtimeapi.ImageFsInfoRequest{})
	if err != nil {
		t.Errorf("ImageFsInfo: %v", err)
	} else if len(fs.ImageFilesystems) == 0 {
		t.Errorf("ImageFsInfo reported no image filesystem: %v", fs)
	}
	sbs, err := rt.ListPodSandbox(ctx(t), &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Errorf("ListPodSandbox: %v", err)
	} else if len(sbs.Items) != 0 {
		t.Errorf("fresh containerd has sandboxes: %v", sbs.Items)
	}

	// containerd's own errors keep their codes through the shim.
	_, err = rt.ContainerStatus(ctx(t), &runtimeapi.ContainerStatusRequest{ContainerId: "does-not-exist"})
	if code := status.Code(err); code != codes.NotFound {
		t.Errorf("ContainerStatus of a missing container: %v, want NotFound", err)
	}
}
