package vm

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/apimachinery/pkg/util/wait"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri/vm/vmm"
	"github.com/lf-edge/evelet/images/vmguest"
	"github.com/lf-edge/evelet/images/vmguest/vmguesttest"
)

// BenchmarkVMBoot boots h3's test guest (disk form) through the backend, as
// the kubelet would (RunPodSandbox, CreateContainer, StartContainer), with
// the image's disk given directly (no containerd), under TCG (no KVM on the
// CI machines) and reports: sandbox+create+start -> container running,
// -> the guest's ready line in the CRI log, and QEMU's resident memory
// beyond the guest's RAM (smaps: every mapping but the guest RAM block).
func BenchmarkVMBoot(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root (netns)")
	}
	os.Setenv(supervisorEnv, "1")
	defer os.Unsetenv(supervisorEnv)
	imgs := vmguesttest.Images(b)
	short, err := os.MkdirTemp("/tmp", "h4vmb-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(short)
	diskDir := filepath.Join(short, "disk")
	os.MkdirAll(diskDir, 0o700)
	data, err := os.ReadFile(imgs.Disk)
	if err != nil {
		b.Fatal(err)
	}
	os.WriteFile(filepath.Join(diskDir, "guest.qcow2"), data, 0o400)
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	be, err := New(Config{StateDir: filepath.Join(short, "vm"), ContainerdSocket: filepath.Join(short, "none.sock"), Images: noImages{},
		NetnsDir: filepath.Join(short, "netns"), Supervisor: []string{os.Args[0]}, KVMDevice: "/nonexistent/kvm",
		AllowEmulation: func() bool { return true }, Log: logrus.NewEntry(log)})
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	be.resolveDisk = func(context.Context, string) (string, error) { return diskDir, nil }
	ctx := context.Background()
	var running, ready time.Duration
	var beyondMiB float64
	for i := 0; i < b.N; i++ {
		name := "b" + strconv.Itoa(i)
		logPath := filepath.Join(short, "logs", name, "vm", "0.log")
		start := time.Now()
		sb, err := be.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{RuntimeHandler: Handler, Config: &runtimeapi.PodSandboxConfig{
			Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "default", Uid: name}, LogDirectory: filepath.Join(short, "logs", name)}})
		if err != nil {
			b.Fatal(err)
		}
		cr, err := be.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: containerConfig("vm", vmguest.DiskRef, 256*mib)})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := be.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
			b.Fatal(err)
		}
		running += time.Since(start)
		err = wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 5*time.Minute, true, func(context.Context) (bool, error) {
			l, _ := os.ReadFile(logPath)
			return bytes.Contains(l, []byte(vmguest.ReadyLine)), nil
		})
		if err != nil {
			b.Fatal("no ready line")
		}
		ready += time.Since(start)
		beyondMiB += qemuBeyondRAM(be, cr.ContainerId)
		be.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.PodSandboxId})
	}
	n := float64(b.N)
	b.ReportMetric(float64(running.Milliseconds())/n, "ms-to-running")
	b.ReportMetric(float64(ready.Milliseconds())/n, "ms-to-ready-line")
	b.ReportMetric(beyondMiB/n, "MiB-qemu-beyond-guest-ram")
}

// qemuBeyondRAM is QEMU's RSS outside the guest RAM block, in MiB.
func qemuBeyondRAM(b *Backend, id string) float64 {
	pid := vmm.ReadPID(filepath.Join(b.store.containerDir(id), vmm.QEMUPIDFile))
	c, _ := b.store.container(id)
	sm, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "smaps"))
	if err != nil {
		return 0
	}
	var total, ram, size int
	for _, l := range strings.Split(string(sm), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "Size:":
			size, _ = strconv.Atoi(f[1])
		case "Rss:":
			kb, _ := strconv.Atoi(f[1])
			total += kb
			if ram == 0 && size >= c.MemoryMiB*1024 && size <= c.MemoryMiB*1024+4096 {
				ram = kb
			}
		}
	}
	return float64(total-ram) / 1024
}
