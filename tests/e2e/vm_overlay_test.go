package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/cri/vm"
	"github.com/lf-edge/evelet/images/vmguest"
	"github.com/lf-edge/evelet/policy"
)

// TestVMOverlayCapAndUnprivilegedQEMU, through the real kubelet (issue 21
// items 9 and 11): the VM pod's QEMU runs as a uid of the VM range with no
// capability while the guest runs, and with the owner's overlay cap at
// 4Mi a guest writing 20 MiB to its disk is stopped: the container ends
// with reason OverlayLimitExceeded and a message naming the rule and the
// config item, shown by kubectl describe pod, and the overlay on the
// device stays within the cap. On the code before, QEMU ran as root and
// the overlay grew with the guest's writes while the pod stayed Running.
func TestVMOverlayCapAndUnprivilegedQEMU(t *testing.T) {
	needEnv(t)
	importVMImages(t, env.ctrd)
	ctx := testCtx(t, 15*time.Minute)
	cs := env.cp.Client()
	node := "edge-vm-cap"
	d, sim := newSimDevice(t, node)
	d.source = append(d.source, "--vm-cni-conf-dir="+env.ctrd.CNIConfDir(), "--vm-cni-bin-dir=/usr/lib/cni", "--vm-kvm-device=/nonexistent/kvm")
	t.Log("the VM pod of this test runs under QEMU software emulation (TCG), KVM turned off")
	deleteNodeAtEnd(t, node)
	const limit = 4 << 20
	cl := simCluster(t, env.cp, "prod", "33333333-4444-4555-8666-777777777779")
	cl.ConfigItems[policy.KeyAllowVMEmulation] = "true"
	cl.ConfigItems[policy.KeyVMOverlayMaxSize] = "4Mi"
	if err := sim.SetCluster(cl); err != nil {
		t.Fatal(err)
	}
	d.start()
	n := waitNodeReady(t, node, 3*time.Minute)
	if n.Labels[agent.LabelVMRuntime] != vm.Handler {
		t.Fatalf("node labels %v lack %s=%s", n.Labels, agent.LabelVMRuntime, vm.Handler)
	}
	applyRuntimeClass(t, ctx)

	name := "vm-capped"
	pod := vmPod(name, vmguest.DiskRef, func(p *corev1.Pod) {
		p.Spec.NodeName = node
		p.Spec.RestartPolicy = corev1.RestartPolicyNever
	})
	if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, context.Background(), cs, name) })
	waitFor(t, 5*time.Minute, "ready line in kubectl logs", func() (bool, error) {
		out, err := env.cp.Kubectl(ctx, "logs", "-n", "default", name)
		return strings.Contains(out, vmguest.ReadyLine), fmt.Errorf("%v: %s", err, tail(out, 5))
	})
	p, err := cs.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
	if err != nil || len(p.Status.ContainerStatuses) != 1 {
		t.Fatalf("pod: %v %v", p, err)
	}
	vmDir := filepath.Join(d.stateDir(), "vm", strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "evelet://"))
	qemu := qemuOf(vmDir)
	if len(qemu) != 1 {
		t.Fatalf("QEMU processes for %s: %v", vmDir, qemu)
	}
	st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", qemu[0]))
	var uid string
	for _, l := range strings.Split(string(st), "\n") {
		k, v, _ := strings.Cut(l, ":")
		f := strings.Fields(v)
		if k == "Uid" {
			uid = strings.Join(f, " ")
		}
		switch {
		case k == "Uid" || k == "Gid":
			if len(f) != 4 || f[0] == "0" || f[0] != f[1] || f[0] != f[2] || f[0] != f[3] {
				t.Errorf("QEMU %s %q: want one non-zero id four times", k, f)
			}
		case k == "CapEff" || k == "CapPrm":
			if len(f) != 1 || f[0] != "0000000000000000" {
				t.Errorf("QEMU %s %q: want no capability", k, f)
			}
		}
	}

	// The guest writes 5 times the cap; kubectl exec may end with the VM.
	out, err := env.cp.Kubectl(ctx, "exec", "-n", "default", name, "--", "/bin/sh", "-c", "dd if=/dev/zero of=/dev/vda bs=1M count=20 conv=fsync")
	t.Logf("guest dd: %v %s", err, tail(out, 3))
	var term *corev1.ContainerStateTerminated
	waitFor(t, 3*time.Minute, "the VM container ended by the overlay cap", func() (bool, error) {
		p, err := cs.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if s := p.Status.ContainerStatuses; len(s) == 1 && s[0].State.Terminated != nil {
			term = s[0].State.Terminated
			return true, nil
		}
		return false, fmt.Errorf("phase %s %v", p.Status.Phase, p.Status.ContainerStatuses)
	})
	if term.Reason != "OverlayLimitExceeded" || !strings.Contains(term.Message, `evelet guardrail "vm-overlay-max-size"`) ||
		!strings.Contains(term.Message, policy.KeyVMOverlayMaxSize) {
		t.Errorf("container ended with %q %q, want OverlayLimitExceeded naming the rule and %s", term.Reason, term.Message, policy.KeyVMOverlayMaxSize)
	}
	desc, err := env.cp.Kubectl(ctx, "describe", "pod", "-n", "default", name)
	if err != nil || !strings.Contains(desc, "OverlayLimitExceeded") || !strings.Contains(desc, policy.KeyVMOverlayMaxSize) {
		t.Errorf("kubectl describe pod does not show the cap: %v\n%s", err, desc)
	}
	var fi syscall.Stat_t
	if err := syscall.Stat(filepath.Join(vmDir, "overlay.qcow2"), &fi); err != nil {
		t.Fatal(err)
	}
	if fi.Size > limit || fi.Blocks*512 > limit {
		t.Errorf("overlay on the device grew past the cap %d: size %d, allocated %d", limit, fi.Size, fi.Blocks*512)
	}
	t.Logf("QEMU (pid %d) ran as uid %s; exit %d %s: %s; overlay size %d, allocated %d", qemu[0], uid, term.ExitCode, term.Reason, term.Message, fi.Size, fi.Blocks*512)
}
