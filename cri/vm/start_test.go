package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/apimachinery/pkg/util/wait"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri/vm/vmm"
)

// noNetwork gives sandboxes no netns at all: for tests of the backend's
// bookkeeping, where no VM boots.
type noNetwork struct{}

func (noNetwork) Setup(context.Context, string, PodMeta) (*Attachment, error) {
	return &Attachment{}, nil
}
func (noNetwork) Teardown(context.Context, string) error { return nil }

// slowSupervisor stands in for `evelet vmm`: it takes delay to come up (as
// the real one does on a loaded device: exec of a large binary, joining
// cgroups), then writes its pid and the started mark and stays.
func slowSupervisor(delay time.Duration) []string {
	script := fmt.Sprintf(`cd "$1" || exit 1; sleep %.2f; echo $$ > %s; : > %s; while :; do sleep 0.2; done`,
		delay.Seconds(), vmm.PIDFile, vmm.StartedFile)
	return []string{"/bin/sh", "-c", script, "supervisor"}
}

// lightBackend is a backend with no containerd, no network and sup as its
// supervisor; nothing it does needs root.
func lightBackend(t *testing.T, sup []string) *Backend {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatalf("qemu-img not installed (hack/install-prereqs.sh installs it): %v", err)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("qemu-system-x86_64 not installed (hack/install-prereqs.sh installs it): %v", err)
	}
	short, err := os.MkdirTemp("/tmp", "vmstart-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(short) })
	b, err := New(Config{StateDir: filepath.Join(short, "vm"), ContainerdSocket: filepath.Join(short, "none.sock"), Images: noImages{},
		Network: noNetwork{}, Supervisor: sup, KVMDevice: "/nonexistent/kvm", AllowEmulation: func() bool { return true },
		Log: logrus.NewEntry(logrus.StandardLogger())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// savedContainer records a created container in sb without a disk: what
// CreateContainer leaves, minus the overlay nothing here boots.
func savedContainer(t *testing.T, b *Backend, sb, name string) *containerState {
	t.Helper()
	c := &containerState{ID: newID(), SandboxID: sb, Metadata: &runtimeapi.ContainerMetadata{Name: name}, CreatedAt: time.Now().UnixNano(), VCPUs: 1, MemoryMiB: 64, Accel: "tcg"}
	if err := os.MkdirAll(b.store.containerDir(c.ID), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := b.store.saveContainer(c); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The fake supervisor may still be coming up: wait for its pid.
		pidFile := filepath.Join(b.store.containerDir(c.ID), vmm.PIDFile)
		wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
			return vmm.ReadPID(pidFile) > 0, nil
		})
		if pid := vmm.ReadPID(pidFile); pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return c
}

// TestStatusDuringStartKeepsTheVM is the first-start flake of issue 21
// item 14: the kubelet asks ContainerStatus while StartContainer waits for
// the supervisor; before the supervisor had written its pid, the status
// call took the VM for lost and recorded "the VM's supervisor is gone",
// which failed the start while the supervisor went on to run QEMU in the
// VM's cgroup (so RemoveContainer then failed with EBUSY).
func TestStatusDuringStartKeepsTheVM(t *testing.T) {
	b := lightBackend(t, slowSupervisor(700*time.Millisecond))
	ctx := context.Background()
	sb, err := b.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{RuntimeHandler: Handler, Config: &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "p", Namespace: "default", Uid: "uid-p"}}})
	if err != nil {
		t.Fatal(err)
	}
	c := savedContainer(t, b, sb.PodSandboxId, "vm")
	done := make(chan error, 1)
	go func() {
		_, err := b.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ID})
		done <- err
	}()
	var startErr error
	polls := 0
	wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		select {
		case startErr = <-done:
			return true, nil
		default:
		}
		polls++
		if _, err := b.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: c.ID}); err != nil {
			t.Errorf("ContainerStatus during start: %v", err)
		}
		return false, nil
	})
	t.Logf("%d ContainerStatus calls while StartContainer ran", polls)
	if startErr != nil {
		t.Fatalf("StartContainer with the kubelet polling its status: %v", startErr)
	}
	if e, _ := b.store.exit(c.ID); e != nil {
		t.Errorf("an exit was recorded for a VM that runs: %+v", e)
	}
	st, err := b.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: c.ID})
	if err != nil || st.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("status after the start: %v %v, want RUNNING", st.GetStatus(), err)
	}
}

// TestRemoveKillsWhatIsLeftInTheVMCgroup: whatever an earlier start left in
// the VM's cgroup (a supervisor or QEMU the backend lost track of, as in
// the first-start flake) is killed when the container is removed, so
// RemoveContainer does not fail forever with "device or resource busy".
func TestRemoveKillsWhatIsLeftInTheVMCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (cgroups)")
	}
	hs, err := hierarchies()
	if err != nil || len(hs) == 0 {
		t.Fatalf("cgroup v1 hierarchies: %v %v", hs, err)
	}
	b := lightBackend(t, slowSupervisor(0))
	ctx := context.Background()
	parent := fmt.Sprintf("/vmremove-%d", os.Getpid())
	t.Cleanup(func() {
		for _, h := range hs {
			ms, _ := filepath.Glob(filepath.Join(h.dir, parent, "*"))
			for _, m := range ms {
				if fi, err := os.Stat(m); err == nil && fi.IsDir() {
					os.Remove(m)
				}
			}
			os.Remove(filepath.Join(h.dir, parent))
		}
	})
	sb, err := b.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{RuntimeHandler: Handler, Config: &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "p", Namespace: "default", Uid: "uid-p"},
		Linux:    &runtimeapi.LinuxPodSandboxConfig{CgroupParent: parent}}})
	if err != nil {
		t.Fatal(err)
	}
	c := savedContainer(t, b, sb.PodSandboxId, "vm")
	c.Cgroup = containerCgroup(parent, c.ID)
	c.StartedAt = time.Now().UnixNano()
	if err := b.store.saveContainer(c); err != nil {
		t.Fatal(err)
	}
	dirs, err := makeCgroups(c.Cgroup, c)
	if err != nil {
		t.Fatal(err)
	}
	// A process nobody tracks, in the VM's cgroup, and an exit record: the
	// state the flake left.
	stray := exec.Command("sleep", "600")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { stray.Wait(); close(reaped) }()
	t.Cleanup(func() { stray.Process.Kill(); <-reaped })
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(fmt.Sprint(stray.Process.Pid)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	vmm.WriteJSON(filepath.Join(b.store.containerDir(c.ID), vmm.ExitFile), &vmm.Exit{ExitCode: 137, Reason: "Error", Message: "the VM's supervisor is gone"})

	if _, err := b.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: c.ID}); err != nil {
		t.Fatalf("RemoveContainer with a process left in the VM's cgroup: %v", err)
	}
	select {
	case <-reaped:
	case <-time.After(10 * time.Second):
		t.Error("the process left in the VM's cgroup still runs after RemoveContainer")
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("cgroup %s left (%v)", d, err)
		}
	}
}

// TestVMsGetTheirOwnUIDs: each VM's QEMU gets a uid of the VM range that no
// other container holds (a QEMU escape must not reach another VM's QEMU),
// kept across calls, and free again once its container is removed.
func TestVMsGetTheirOwnUIDs(t *testing.T) {
	b := lightBackend(t, slowSupervisor(0))
	c1 := &containerState{ID: newID(), Metadata: &runtimeapi.ContainerMetadata{Name: "a"}}
	c2 := &containerState{ID: newID(), Metadata: &runtimeapi.ContainerMetadata{Name: "b"}}
	for _, c := range []*containerState{c1, c2} {
		os.MkdirAll(b.store.containerDir(c.ID), 0o700)
		if err := b.giveUID(c); err != nil {
			t.Fatal(err)
		}
	}
	if c1.UID < FirstVMUID || c2.UID < FirstVMUID || c1.UID == c2.UID {
		t.Fatalf("uids %d and %d: want two distinct ones from %d", c1.UID, c2.UID, FirstVMUID)
	}
	if saved, err := b.store.container(c2.ID); err != nil || saved.UID != c2.UID {
		t.Errorf("uid not saved with the container: %v %v", saved, err)
	}
	before := c1.UID
	if err := b.giveUID(c1); err != nil || c1.UID != before {
		t.Errorf("a container's uid changed: %d -> %d (%v)", before, c1.UID, err)
	}
	os.RemoveAll(b.store.containerDir(c1.ID))
	c3 := &containerState{ID: newID(), Metadata: &runtimeapi.ContainerMetadata{Name: "c"}}
	os.MkdirAll(b.store.containerDir(c3.ID), 0o700)
	if err := b.giveUID(c3); err != nil || c3.UID != before {
		t.Errorf("uid of a removed container not given again: got %d, want %d (%v)", c3.UID, before, err)
	}
}
