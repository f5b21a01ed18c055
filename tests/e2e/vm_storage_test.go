package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/lf-edge/evelet/images/vmguest"
	"github.com/lf-edge/evelet/policy"
)

// vmDevice starts a device that runs VM pods under TCG (KVM off, as on
// the CI machines; see TestVMPods) and waits for its node; prepare runs
// before the agent starts.
func vmDevice(t *testing.T, ctx context.Context, node, clusterID string, prepare func(*device)) *device {
	t.Helper()
	d, sim := newSimDevice(t, node)
	d.source = append(d.source, "--vm-cni-conf-dir="+env.ctrd.CNIConfDir(), "--vm-cni-bin-dir=/usr/lib/cni", "--vm-kvm-device=/nonexistent/kvm")
	deleteNodeAtEnd(t, node)
	cl := simCluster(t, env.cp, "prod", clusterID)
	cl.ConfigItems[policy.KeyAllowVMEmulation] = "true"
	if err := sim.SetCluster(cl); err != nil {
		t.Fatal(err)
	}
	if prepare != nil {
		prepare(d)
	}
	d.start()
	waitNodeReady(t, node, 3*time.Minute)
	applyRuntimeClass(t, ctx)
	return d
}

// waitVMReady waits for the pod to run and its guest's ready line, and
// returns the pod.
func waitVMReady(t *testing.T, ctx context.Context, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	waitFor(t, 5*time.Minute, name+" Running", func() (bool, error) {
		p, err := env.cp.Client().CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pod = p
		return p.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s %v", p.Status.Phase, p.Status.ContainerStatuses)
	})
	waitFor(t, 5*time.Minute, name+" ready line in kubectl logs", func() (bool, error) {
		out, err := env.cp.Kubectl(ctx, "logs", "-n", "default", name)
		return strings.Contains(out, vmguest.ReadyLine), fmt.Errorf("%v: %s", err, tail(out, 5))
	})
	return pod
}

// waitPodEventReason waits for an event of the pod with this reason whose
// message has want, and returns the message.
func waitPodEventReason(t *testing.T, ctx context.Context, name, reason, want string, timeout time.Duration) string {
	t.Helper()
	var msg string
	waitFor(t, timeout, name+" event "+reason+" with "+want, func() (bool, error) {
		ev, err := env.cp.Client().CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
		if err != nil {
			return false, err
		}
		var seen []string
		for _, e := range ev.Items {
			if e.Reason == reason && strings.Contains(e.Message, want) {
				msg = e.Message
				return true, nil
			}
			seen = append(seen, e.Reason+": "+e.Message)
		}
		return false, fmt.Errorf("events: %q", seen)
	})
	return msg
}

func allocatedBytes(p string) int64 {
	var st syscall.Stat_t
	if syscall.Stat(p, &st) != nil {
		return -1
	}
	return st.Blocks * 512
}

func freeBytes(p string) int64 {
	var st syscall.Statfs_t
	if syscall.Statfs(p, &st) != nil {
		return -1
	}
	return int64(st.Bavail) * st.Bsize
}

// TestVMEphemeralStorageEviction: a VM pod whose guest writes past its
// ephemeral-storage limit is evicted by the real kubelet (issue 21 item
// 9): the guest's writes land in the container's qcow2 overlay, which the
// CRI stats report as the container's writable layer; the kubelet's
// eviction manager sees the pod over its limit, evicts it (event
// Evicted naming ephemeral storage, in kubectl describe), and its
// container GC then removes the container: the overlay goes and no QEMU
// holds it, so its room on the device is free again.
func TestVMEphemeralStorageEviction(t *testing.T) {
	needEnv(t)
	importVMImages(t, env.ctrd)
	ctx := testCtx(t, 15*time.Minute)
	cs := env.cp.Client()
	d := vmDevice(t, ctx, "edge-vm-evict", "33333333-4444-4555-8666-777777777779", nil)
	t.Log("TCG, KVM off (see TestVMPods)")

	const limit = "8Mi"
	p := vmPod("vm-fill", vmguest.DiskRef, func(p *corev1.Pod) {
		p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceEphemeralStorage: resource.MustParse(limit)}
	})
	if _, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, context.Background(), cs, p.Name) })
	pod := waitVMReady(t, ctx, p.Name)
	vmDir := filepath.Join(d.stateDir(), "vm", strings.TrimPrefix(pod.Status.ContainerStatuses[0].ContainerID, "evelet://"))
	overlay := filepath.Join(vmDir, "overlay.qcow2")
	before, freeBefore := allocatedBytes(overlay), freeBytes(d.stateDir())
	if before < 0 || before > 4<<20 {
		t.Fatalf("overlay %s takes %d bytes before the guest writes, want a fresh overlay under the %s limit", overlay, before, limit)
	}

	// The guest writes 20 MiB of random data to its disk (the test guest
	// runs from its initramfs: its disk is not in use).
	out, err := env.cp.Kubectl(ctx, "exec", "-n", "default", p.Name, "--", "/bin/sh", "-c",
		"dd if=/dev/urandom of=/dev/vda bs=1M count=20 conv=fsync 2>&1; echo dd-exit=$?")
	t.Logf("dd in the guest: %v %s", err, tail(out, 3))
	if err == nil && !strings.Contains(out, "dd-exit=0") {
		t.Fatalf("the guest could not write its disk: %s", out)
	}
	written := allocatedBytes(overlay)
	t.Logf("overlay after the guest's writes: %d MiB allocated (was %d KiB); state fs free %d MiB (was %d MiB)",
		written>>20, before>>10, freeBytes(d.stateDir())>>20, freeBefore>>20)

	msg := waitPodEventReason(t, ctx, p.Name, "Evicted", "ephemeral", 3*time.Minute)
	t.Logf("eviction: %s", msg)
	if !strings.Contains(msg, limit) {
		t.Errorf("eviction message %q does not name the %s limit", msg, limit)
	}
	if out, err := env.cp.Kubectl(ctx, "describe", "pod", "-n", "default", p.Name); err != nil || !strings.Contains(out, "Evicted") {
		t.Errorf("kubectl describe pod lacks the eviction: %v\n%s", err, tail(out, 15))
	}
	// The pod ends. (Its phase: the kubelet's eviction asks for Failed /
	// Evicted, but the guest powers off cleanly on the ACPI stop, QEMU
	// exits 0, and the kubelet has been seen to report Succeeded without
	// a reason: logged, not asserted.)
	waitFor(t, 2*time.Minute, "evicted pod ended", func() (bool, error) {
		got, err := cs.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		t.Logf("evicted pod: phase %s reason %q", got.Status.Phase, got.Status.Reason)
		return got.Status.Phase == corev1.PodFailed || got.Status.Phase == corev1.PodSucceeded, fmt.Errorf("phase %s", got.Status.Phase)
	})
	// The kubelet's container GC removes an evicted pod's containers
	// (about once a minute): the overlay goes with its VM directory, and
	// no QEMU keeps the deleted file open.
	waitFor(t, 3*time.Minute, "evicted VM's overlay removed", func() (bool, error) {
		_, err := os.Stat(vmDir)
		return os.IsNotExist(err) && len(qemuOf(vmDir)) == 0, fmt.Errorf("dir %v qemu %v", err, qemuOf(vmDir))
	})
	t.Logf("after the eviction: overlay (%d MiB) gone, state fs free %d MiB (%d MiB before the writes; other processes share this file system)", written>>20, freeBytes(d.stateDir())>>20, freeBefore>>20)
}

// TestVMDiskReserveRefusal: a VM image whose extraction would leave less
// than the 512 MiB reserve free on the state file system is refused with
// a clear error in kubectl describe, and nothing of it stays (issue 21
// item 9, "checked against free space first"). The device's image cache
// is a 520 MiB tmpfs here: any disk data is over the reserve. No guest
// boots.
func TestVMDiskReserveRefusal(t *testing.T) {
	needEnv(t)
	importVMImages(t, env.ctrd)
	ctx := testCtx(t, 10*time.Minute)
	cs := env.cp.Client()
	var images string
	vmDevice(t, ctx, "edge-vm-reserve", "33333333-4444-4555-8666-77777777777a", func(d *device) {
		images = filepath.Join(d.stateDir(), "vm", "images")
		if err := os.MkdirAll(images, 0o700); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=520m,mode=0700", "evelet-e2e-reserve", images).CombinedOutput(); err != nil {
			t.Fatalf("mount tmpfs: %v %s", err, out)
		}
		t.Cleanup(func() { exec.Command("umount", images).Run() }) // before the device's directory goes
	})
	p := vmPod("vm-noroom", vmguest.DiskRef, nil)
	if _, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, context.Background(), cs, p.Name) })
	waitPodEvent(t, ctx, cs, p.Name, "not enough room to extract the VM disk")
	got, err := cs.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range got.Status.ContainerStatuses {
		if st.State.Running != nil || st.ContainerID != "" {
			t.Errorf("container made for a disk that does not fit: %+v", st)
		}
	}
	ents, _ := readDirNames(images)
	if len(ents) != 0 {
		t.Errorf("the refused extraction left %v in the image cache", ents)
	}
}

// TestVMHostileGuestAgentBounded: a guest whose agent answers exec with
// 43 MB (16 MiB of stdout and 16 MiB of stderr, base64 in one
// guest-exec-status answer: what the test guest's agent sends at most)
// does not grow the evelet agent (issue 21 item 10, measured here through
// the real kubelet): the pod's exec liveness probe and a kubectl exec get
// an error saying the answer is over what evelet reads, and the agent's
// RSS stays within a bound of what it was before, during and after.
// Before item 10 a 100 MB answer took the agent from 117 to 521 MB on one
// exec and held it at 700-850 MB under an exec probe.
func TestVMHostileGuestAgentBounded(t *testing.T) {
	needEnv(t)
	importVMImages(t, env.ctrd)
	ctx := testCtx(t, 15*time.Minute)
	cs := env.cp.Client()
	d := vmDevice(t, ctx, "edge-vm-hostile", "33333333-4444-4555-8666-77777777777b", nil)
	agentPID := d.cmd.Process.Pid

	// The probe answers small until the test makes the guest hostile, so
	// that the baseline includes probes running.
	const hostile = "dd if=/dev/zero bs=1M count=16 2>/dev/null; dd if=/dev/zero bs=1M count=16 2>/dev/null >&2"
	p := vmPod("vm-hostile", vmguest.DiskRef, func(p *corev1.Pod) {
		p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")}
		p.Spec.Containers[0].LivenessProbe = &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"/bin/sh", "-c",
				"if [ -e /tmp/hostile ]; then " + hostile + "; fi; true"}}},
			PeriodSeconds: 5, TimeoutSeconds: 60,
			// Errors must not restart the VM: the probe keeps hitting the agent.
			FailureThreshold: 1000,
		}
	})
	if _, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, context.Background(), cs, p.Name) })
	waitVMReady(t, ctx, p.Name)
	base := settledRSSKB(agentPID)
	t.Logf("agent RSS with the VM running and benign probes: %d MiB", base>>10)

	if out, err := env.cp.Kubectl(ctx, "exec", "-n", "default", p.Name, "--", "/bin/touch", "/tmp/hostile"); err != nil {
		t.Fatalf("make the guest hostile: %v %s", err, out)
	}
	// Sample the agent's RSS while the probe and a kubectl exec get the
	// huge answers.
	var peak int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tk := time.NewTicker(200 * time.Millisecond)
		defer tk.Stop()
		for {
			if r := rssKB(agentPID); r > peak {
				peak = r
			}
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	}()
	const tooLarge = "the most evelet reads from a guest"
	out, err := env.cp.Kubectl(ctx, "exec", "-n", "default", p.Name, "--", "/bin/sh", "-c", hostile)
	if err == nil || !strings.Contains(out, tooLarge) {
		t.Errorf("kubectl exec with a 43 MB answer: %v, output %q; want an error saying %q", err, tail(out, 3), tooLarge)
	}
	// Several probes with the huge answer (each one an Unhealthy event).
	// Not fatal: the RSS below is the figure to see either way.
	probeErrors := int32(0)
	err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		ev, err := cs.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + p.Name})
		if err != nil {
			return false, nil
		}
		probeErrors = 0
		for _, e := range ev.Items {
			if e.Reason == "Unhealthy" && strings.Contains(e.Message, tooLarge) {
				probeErrors += max(e.Count, 1)
			}
		}
		return probeErrors >= 3, nil
	})
	if err != nil {
		t.Errorf("%d exec probe errors naming the bound (%q) in 3 min, want 3: %v", probeErrors, tooLarge, err)
	}
	close(stop)
	<-sampled
	if out, err := env.cp.Kubectl(ctx, "exec", "-n", "default", p.Name, "--", "/bin/rm", "/tmp/hostile"); err != nil {
		t.Errorf("make the guest benign again: %v %s", err, out)
	}
	after := settledRSSKB(agentPID)
	t.Logf("agent RSS: %d MiB before, peak %d MiB during the hostile answers, %d MiB after", base>>10, peak>>10, after>>10)
	// 4 answers of at most 4 MiB at once, their decoding and the Go
	// heap's growth: 64 MiB is far below what one unbounded answer cost.
	const bound = 64 << 10 // KiB
	if peak-base > bound || after-base > bound {
		t.Errorf("agent RSS grew by %d MiB (peak) / %d MiB (after) over its %d MiB, want at most %d MiB", (peak-base)>>10, (after-base)>>10, base>>10, bound>>10)
	}
	got, err := cs.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil || got.Status.Phase != corev1.PodRunning {
		t.Errorf("the VM pod after the hostile answers: %v %v", err, got.Status.Phase)
	}
}
