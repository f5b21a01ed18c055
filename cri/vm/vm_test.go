package vm

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/wait"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri/vm/vmm"
	"github.com/lf-edge/evelet/tests/containerd"
)

// supervisorEnv makes the test binary act as `evelet vmm` when it is
// started as the supervisor (TestMain).
const supervisorEnv = "EVELET_VM_TEST_SUPERVISOR"

func TestMain(m *testing.M) {
	if os.Getenv(supervisorEnv) == "1" {
		log := logrus.NewEntry(logrus.StandardLogger())
		if err := vmm.Run(os.Args[len(os.Args)-1], log); err != nil {
			log.WithError(err).Error("supervisor")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// bootSector is a 512-byte MBR that prints line on COM1 and then powers the
// machine off through the ICH9 PM1a control register (SeaBIOS puts PMBASE at
// 0x600 on q35; SLP_EN with SLP_TYP 0 is soft-off in QEMU), or, with
// poweroff false, halts forever (ignoring the ACPI power button, as a guest
// without ACPI support would).
func bootSector(line string, poweroff bool) []byte {
	code := []byte{
		0xFA,       // cli
		0x31, 0xC0, // xor ax,ax
		0x8E, 0xD8, // mov ds,ax
		0xBE, 0x00, 0x00, // mov si,msg (patched)
		0xBA, 0xF8, 0x03, // mov dx,0x3f8
		0xAC,       // lodsb            (11)
		0x84, 0xC0, // test al,al
		0x74, 0x03, // jz done (19)
		0xEE,       // out dx,al
		0xEB, 0xF8, // jmp 11
	}
	if poweroff {
		code = append(code, 0xBA, 0x04, 0x06, 0xB8, 0x00, 0x20, 0xEF) // mov dx,0x604; mov ax,0x2000; out dx,ax
	}
	code = append(code, 0xF4, 0xEB, 0xFD) // hlt; jmp hlt
	binary.LittleEndian.PutUint16(code[6:], uint16(0x7c00+len(code)))
	code = append(code, []byte(line+"\r\n\x00")...)
	disk := make([]byte, 1<<20)
	copy(disk, code)
	disk[510], disk[511] = 0x55, 0xAA
	return disk
}

// diskImage writes an OCI image tarball with files (path -> content).
func diskImage(t *testing.T, dir, ref string, files map[string][]byte) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "disk/", Typeflag: tar.TypeDir, Mode: 0o755})
	for p, b := range files {
		tw.WriteHeader(&tar.Header{Name: p, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b))})
		tw.Write(b)
	}
	tw.Close()
	layer, err := tarball.LayerFromReader(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	base, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{Architecture: "amd64", OS: "linux", RootFS: v1.RootFS{Type: "layers"}})
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
	if err := tarball.WriteToFile(p, tag, img); err != nil {
		t.Fatal(err)
	}
	return p
}

type harness struct {
	t        *testing.T
	ctrd     *containerd.Containerd
	stateDir string
	netnsDir string
	logDir   string
	emulate  bool
	noKVM    bool
	// cgroupParent is the sandboxes' cgroup parent, as the kubelet passes it.
	cgroupParent string
	network      Network
	mu           sync.Mutex
}

func (h *harness) backend() *Backend {
	h.t.Helper()
	// Say plainly how this backend's guests run.
	if h.noKVM || !KVMUsable(DefaultKVMDevice) {
		h.t.Logf("this backend's VMs run under QEMU's software emulation (TCG), slowly: KVM is off or %s is not usable here", DefaultKVMDevice)
	} else {
		h.t.Logf("this backend's VMs run under KVM (%s)", DefaultKVMDevice)
	}
	conn, err := h.ctrd.DialCRI()
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	b, err := New(Config{
		StateDir: h.stateDir, ContainerdSocket: h.ctrd.Socket(), Images: runtimeapi.NewImageServiceClient(conn),
		Network: h.network, NetnsDir: h.netnsDir, Supervisor: []string{os.Args[0]}, KVMDevice: kvmDevice(h.noKVM),
		AllowEmulation: func() bool { h.mu.Lock(); defer h.mu.Unlock(); return h.emulate },
		Log:            logrus.NewEntry(logrus.StandardLogger()),
	})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { b.Close() })
	return b
}

func kvmDevice(none bool) string {
	if none {
		return "/nonexistent/kvm"
	}
	return ""
}

// dumpVMLogs shows the supervisors' and QEMUs' own logs of a failed test.
func dumpVMLogs(t *testing.T, stateDir string) {
	for _, pat := range []string{"*/" + vmm.LogFile, "*/" + vmm.QEMULogFile, "*/" + vmm.ExitFile} {
		ms, _ := filepath.Glob(filepath.Join(stateDir, pat))
		for _, m := range ms {
			b, _ := os.ReadFile(m)
			t.Logf("%s:\n%s", m, b)
		}
	}
}

func needVMHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("VM backend tests need root (netns, cgroups, containerd)")
	}
	for _, b := range []string{"qemu-system-x86_64", "qemu-img", "containerd"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed (hack/install-prereqs.sh installs it)", b)
		}
	}
}

func newHarness(t *testing.T) *harness {
	needVMHost(t)
	t.Setenv(supervisorEnv, "1")
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := containerd.Start(ctx, containerd.Options{Dir: filepath.Join(dir, "ctrd"), RestrictOOMScoreAdj: true,
		BridgeName: "h4vmtest0", NetworkName: "h4-vmtest", PodCIDR: "10.244.204.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	// Short paths: sockets live under the state directory.
	short, err := os.MkdirTemp("/tmp", "h4vm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(short) })
	return &harness{t: t, ctrd: c, stateDir: filepath.Join(short, "vm"), netnsDir: filepath.Join(short, "netns"),
		logDir: filepath.Join(dir, "logs"), emulate: true}
}

func (h *harness) sandbox(b *Backend, name string) string {
	h.t.Helper()
	resp, err := b.RunPodSandbox(context.Background(), &runtimeapi.RunPodSandboxRequest{RuntimeHandler: Handler, Config: &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "default", Uid: "uid-" + name},
		LogDirectory: filepath.Join(h.logDir, name),
		Linux:        &runtimeapi.LinuxPodSandboxConfig{CgroupParent: h.cgroupParent},
	}})
	if err != nil {
		h.t.Fatal(err)
	}
	// Also when the test fails half-way: no VM, netns or tap may outlive it.
	h.t.Cleanup(func() {
		b.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: resp.PodSandboxId})
	})
	return resp.PodSandboxId
}

func containerConfig(name, image string, memLimit int64) *runtimeapi.ContainerConfig {
	return &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image:    &runtimeapi.ImageSpec{Image: image, UserSpecifiedImage: image},
		LogPath:  name + "/0.log",
		Linux:    &runtimeapi.LinuxContainerConfig{Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: memLimit}},
	}
}

func waitState(t *testing.T, b *Backend, id string, want runtimeapi.ContainerState, timeout time.Duration) *runtimeapi.ContainerStatus {
	t.Helper()
	var st *runtimeapi.ContainerStatus
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		r, err := b.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			return false, err
		}
		st = r.Status
		return st.State == want, nil
	})
	if err != nil {
		t.Fatalf("container %s: want %v, last status %+v: %v", id, want, st, err)
	}
	return st
}

func waitLog(t *testing.T, path, want string, timeout time.Duration) {
	t.Helper()
	var last []byte
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		last, _ = os.ReadFile(path)
		return bytes.Contains(last, []byte(" stdout F "+want+"\n")), nil
	})
	if err != nil {
		t.Fatalf("log %s has no CRI entry %q: %q", path, want, last)
	}
}

// TestVMLifecycle runs real QEMU (TCG) guests from containerDisk images in
// a real containerd: boot, console in the CRI log, guest power-off as the
// container's exit, stop with the hard kill after the grace period,
// re-adoption by a new Backend, and removal leaving nothing behind.
func TestVMLifecycle(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	tars := t.TempDir()
	raw := diskImage(t, tars, "evelet.local/h4-poweroff:1", map[string][]byte{"disk/boot.raw": bootSector("evelet-test: hello", true)})
	halt := diskImage(t, tars, "evelet.local/h4-halt:1", map[string][]byte{"disk/boot.raw": bootSector("evelet-test: halted", false)})
	if err := h.ctrd.ImportImages(ctx, raw, halt); err != nil {
		t.Fatal(err)
	}
	// TCG, as on the CI machines this must pass on (no KVM there).
	h.noKVM = true
	b := h.backend()

	// A guest that powers itself off: the container exits 0.
	sb := h.sandbox(b, "poweroff")
	cr, err := b.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb, Config: containerConfig("vm", "evelet.local/h4-poweroff:1", 0)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpVMLogs(t, h.stateDir)
		}
	})
	logPath := filepath.Join(h.logDir, "poweroff", "vm", "0.log")
	waitLog(t, logPath, "evelet-test: hello", 2*time.Minute)
	st := waitState(t, b, cr.ContainerId, runtimeapi.ContainerState_CONTAINER_EXITED, 2*time.Minute)
	if st.ExitCode != 0 || st.Reason != "Completed" {
		t.Errorf("guest power-off: exit %d reason %q, want 0 Completed", st.ExitCode, st.Reason)
	}

	// A guest that ignores the power button: killed after the grace period.
	sb2 := h.sandbox(b, "halt")
	cr2, err := b.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb2, Config: containerConfig("vm", "evelet.local/h4-halt:1", 256*mib)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cr2.ContainerId}); err != nil {
		t.Fatal(err)
	}
	waitLog(t, filepath.Join(h.logDir, "halt", "vm", "0.log"), "evelet-test: halted", 2*time.Minute)
	c2, _ := b.store.container(cr2.ContainerId)
	if c2.MemoryMiB != 256 || c2.MemoryLimit != (256+QEMUOverheadMiB)*mib || c2.Accel != "tcg" || c2.VCPUs != 1 {
		t.Errorf("guest sizing: %d MiB, %s, %d vCPUs", c2.MemoryMiB, c2.Accel, c2.VCPUs)
	}
	qemuPID := vmm.ReadPID(filepath.Join(b.store.containerDir(cr2.ContainerId), vmm.QEMUPIDFile))

	// A new Backend on the same state (the shim restarted) finds both.
	b2 := h.backend()
	waitState(t, b2, cr2.ContainerId, runtimeapi.ContainerState_CONTAINER_RUNNING, time.Second)
	ls, err := b2.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil || len(ls.Containers) != 2 {
		t.Fatalf("re-adopted containers: %v %v", ls, err)
	}
	if _, err := b2.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: strings.Repeat("0", idLen)}); status.Code(err) != codes.NotFound {
		t.Errorf("unknown container: %v, want NotFound", err)
	}
	if _, err := b2.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: "../../etc"}); status.Code(err) != codes.NotFound {
		t.Errorf("path-like sandbox ID: %v, want NotFound", err)
	}

	start := time.Now()
	if _, err := b2.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: cr2.ContainerId, Timeout: 2}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Errorf("stop returned after %v, before the grace period", d)
	}
	st = waitState(t, b2, cr2.ContainerId, runtimeapi.ContainerState_CONTAINER_EXITED, 10*time.Second)
	if st.ExitCode != 137 {
		t.Errorf("killed guest: exit %d, want 137", st.ExitCode)
	}
	if vmm.ProcessAlive(qemuPID, b.store.containerDir(cr2.ContainerId)) {
		t.Errorf("QEMU %d still runs after stop", qemuPID)
	}

	// Removal leaves no directory, netns or log.
	for _, id := range []string{sb, sb2} {
		if _, err := b2.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Fatal(err)
		}
		if _, err := b2.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Fatal(err)
		}
		if _, err := b2.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); status.Code(err) != codes.NotFound {
			t.Errorf("second remove: %v, want NotFound (the shim makes it success)", err)
		}
	}
	for _, p := range []string{b.store.containerDir(cr.ContainerId), b.store.containerDir(cr2.ContainerId), filepath.Join(h.netnsDir, sb), logPath} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind (%v)", p, err)
		}
	}
}

// TestVMRefusals: bad input is a clear error at CreateContainer and leaves
// nothing behind.
func TestVMRefusals(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	tars := t.TempDir()
	good := bootSector("x", true)
	corrupt := append([]byte("QFI\xfb\x00\x00\x00\x03"), make([]byte, 4096)...)
	var imgs []string
	for ref, files := range map[string]map[string][]byte{
		"evelet.local/h4-good:1":    {"disk/boot.raw": good},
		"evelet.local/h4-nodisk:1":  {"etc/hello": []byte("hi")},
		"evelet.local/h4-corrupt:1": {"disk/disk.qcow2": corrupt},
		"evelet.local/h4-twodisk:1": {"disk/a.raw": good, "disk/b.raw": good},
	} {
		imgs = append(imgs, diskImage(t, tars, ref, files))
	}
	if err := h.ctrd.ImportImages(ctx, imgs...); err != nil {
		t.Fatal(err)
	}
	b := h.backend()
	sb := h.sandbox(b, "refusals")
	create := func(cfg *runtimeapi.ContainerConfig) error {
		_, err := b.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb, Config: cfg})
		return err
	}
	for _, tc := range []struct {
		name string
		cfg  *runtimeapi.ContainerConfig
		want string
	}{
		{"no disk", containerConfig("vm", "evelet.local/h4-nodisk:1", 0), "has no VM disk: a VM pod's image must hold its disk under /disk/"},
		{"corrupt qcow2", containerConfig("vm", "evelet.local/h4-corrupt:1", 0), "/disk/disk.qcow2: corrupt or unreadable disk image"},
		{"two disks", containerConfig("vm", "evelet.local/h4-twodisk:1", 0), "has 2 files under /disk/"},
		{"memory too small", containerConfig("vm", "evelet.local/h4-good:1", 32*mib), "memory limit 32Mi is below the minimum guest RAM of a VM pod, 64Mi"},
	} {
		err := create(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	h.mu.Lock()
	h.emulate = false
	h.mu.Unlock()
	h.noKVM = true
	b = h.backend()
	if err := create(containerConfig("vm", "evelet.local/h4-good:1", 0)); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "evelet.policy.allow-vm-emulation") {
		t.Errorf("no KVM, emulation not allowed: %v", err)
	}
	h.mu.Lock()
	h.emulate = true
	h.mu.Unlock()
	if err := create(containerConfig("vm", "evelet.local/h4-good:1", 0)); err != nil {
		t.Fatal(err)
	}
	if err := create(containerConfig("sidecar", "evelet.local/h4-good:1", 0)); err == nil || !strings.Contains(err.Error(), "runs exactly one container") {
		t.Errorf("second container: %v", err)
	}
	ls, _ := b.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if len(ls.GetContainers()) != 1 {
		t.Errorf("refused containers left state: %v", ls.GetContainers())
	}
	if _, err := b.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb}); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(h.stateDir)
	for _, e := range ents {
		if e.Name() != imagesDir && e.Name() != sandboxesDir {
			t.Errorf("left in the state directory: %s", e.Name())
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
