package vm

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/apimachinery/pkg/util/wait"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri/vm/vmm"
	"github.com/lf-edge/evelet/cri/vm/vmnet"
	"github.com/lf-edge/evelet/images/vmguest"
	"github.com/lf-edge/evelet/images/vmguest/vmguesttest"
)

// TestVMGuest boots the real test guest (h3's containerDisk, firmware boot,
// TCG) on the pod network made by vmnet from containerd's own CNI config:
// the ready line reaches the CRI log, the pod IP is the guest's (HTTP from
// the host answers from inside it), exec runs through the guest agent, a
// graceful stop is the guest powering off on the ACPI button, and removal
// leaves no tap, netns or VM directory.
func TestVMGuest(t *testing.T) {
	h := newHarness(t)
	imgs := vmguesttest.Images(t)
	ctx := context.Background()
	if err := h.ctrd.ImportImages(ctx, imgs.DiskTar); err != nil {
		t.Fatal(err)
	}
	n, err := vmnet.New(vmnet.Config{CNIConfDir: h.ctrd.CNIConfDir(), CNIBinDirs: []string{"/usr/lib/cni"},
		NetnsDir: h.netnsDir, CacheDir: filepath.Join(filepath.Dir(h.stateDir), "vmnet")})
	if err != nil {
		t.Fatal(err)
	}
	h.network = n
	h.noKVM = true // TCG, as on CI
	b := h.backend()
	t.Cleanup(func() {
		if t.Failed() {
			dumpVMLogs(t, h.stateDir)
		}
	})

	created := time.Now()
	sb := h.sandbox(b, "guest")
	cr, err := b.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb, Config: containerConfig("vm", vmguest.DiskRef, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
		t.Fatal(err)
	}
	running := time.Since(created)
	waitLog(t, filepath.Join(h.logDir, "guest", "vm", "0.log"), vmguest.ReadyLine, 5*time.Minute)
	t.Logf("create -> running %v, create -> ready line %v (TCG)", running.Round(time.Millisecond), time.Since(created).Round(time.Millisecond))
	logQEMURSS(t, b, cr.ContainerId)

	st, err := b.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sb})
	if err != nil {
		t.Fatal(err)
	}
	ip := st.GetStatus().GetNetwork().GetIp()
	if ip == "" {
		t.Fatal("VM pod has no IP")
	}
	var body string
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		cl := http.Client{Timeout: 2 * time.Second}
		resp, err := cl.Get("http://" + ip + "/")
		if err != nil {
			return false, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return true, nil
	})
	if err != nil || !strings.HasPrefix(body, "evelet-guest ") || !strings.Contains(body, ip) {
		t.Fatalf("HTTP to pod IP %s: %q %v", ip, body, err)
	}

	ex, err := b.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: cr.ContainerId, Cmd: []string{"/bin/sh", "-c", "echo from-guest; exit 3"}, Timeout: 60})
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(ex.Stdout)) != "from-guest" || ex.ExitCode != 3 {
		t.Errorf("exec in guest: %q exit %d", ex.Stdout, ex.ExitCode)
	}
	if _, err := b.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: cr.ContainerId, Cmd: []string{"sh"}, Tty: true, Stdin: true}); err == nil {
		t.Error("exec with a tty: no error")
	}

	// Graceful stop: the guest powers off on the ACPI button, exit 0.
	if _, err := b.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: cr.ContainerId, Timeout: 120}); err != nil {
		t.Fatal(err)
	}
	cs := waitState(t, b, cr.ContainerId, runtimeapi.ContainerState_CONTAINER_EXITED, 5*time.Second)
	if cs.ExitCode != 0 {
		t.Errorf("graceful stop: exit %d (%s), want 0: the guest should power off", cs.ExitCode, cs.Message)
	}
	var taps []string
	for _, nic := range b2nics(t, b, sb) {
		taps = append(taps, nic.Tap)
	}
	if _, err := b.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(h.netnsDir, sb)); !os.IsNotExist(err) {
		t.Errorf("netns left: %v", err)
	}
	if _, err := os.Stat(b.store.containerDir(cr.ContainerId)); !os.IsNotExist(err) {
		t.Errorf("VM directory left: %v", err)
	}
	for _, tap := range taps {
		if _, err := netlink.LinkByName(tap); err == nil {
			t.Errorf("tap %s left in the host netns", tap)
		}
	}
}

func b2nics(t *testing.T, b *Backend, sb string) []NIC {
	s, err := b.store.sandbox(sb)
	if err != nil || s.Net == nil {
		t.Fatalf("sandbox state: %v", err)
	}
	return s.Net.NICs
}

// logQEMURSS logs QEMU's resident memory beyond the guest's RAM
// (qemuBeyondRAM).
func logQEMURSS(t *testing.T, b *Backend, id string) {
	sup := vmm.ReadPID(filepath.Join(b.store.containerDir(id), vmm.PIDFile))
	st, _ := os.ReadFile(filepath.Join("/proc", itoa(sup), "status"))
	var rss string
	for _, l := range strings.Split(string(st), "\n") {
		if strings.HasPrefix(l, "VmRSS:") || strings.HasPrefix(l, "RssAnon:") {
			rss += strings.Join(strings.Fields(l), " ") + " "
		}
	}
	t.Logf("QEMU RSS beyond guest RAM: %.1f MiB; supervisor RSS %s", qemuBeyondRAM(b, id), rss)
}
