package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/cri/vm"
	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/images/vmguest"
	"github.com/lf-edge/evelet/images/vmguest/vmguesttest"
	"github.com/lf-edge/evelet/policy"
	"github.com/lf-edge/evelet/tests/containerd"
)

const corruptDiskRef = "evelet.local/h4-corrupt-disk:1"

var (
	vmImagesOnce sync.Once
	vmImageTars  []string
	vmImagesErr  error
)

// importVMImages builds h3's guest images and a corrupt-qcow2 image, once
// per test binary, and imports them into c (the shared harness's
// containerd, or a test's own).
func importVMImages(t *testing.T, c *containerd.Containerd) {
	t.Helper()
	vmImagesOnce.Do(func() {
		if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
			vmImagesErr = fmt.Errorf("qemu-system-x86_64 not installed (hack/install-prereqs.sh): %w", err)
			return
		}
		imgs := vmguesttest.Images(t)
		corrupt, err := corruptDiskImage(filepath.Join(env.root, "_output", "images"))
		if err != nil {
			vmImagesErr = err
			return
		}
		vmImageTars = []string{imgs.DiskTar, imgs.KernelTar, corrupt}
	})
	if vmImagesErr != nil {
		t.Fatal(vmImagesErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := c.ImportImages(ctx, vmImageTars...); err != nil {
		t.Fatal(err)
	}
}

// corruptDiskImage is a containerDisk whose qcow2 has a valid header and
// garbage behind it.
func corruptDiskImage(dir string) (string, error) {
	data := append([]byte("QFI\xfb\x00\x00\x00\x03"), bytes.Repeat([]byte{0xff}, 4096)...)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "disk/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "disk/disk.qcow2", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))})
	tw.Write(data)
	tw.Close()
	layer, err := tarball.LayerFromReader(bytes.NewReader(buf.Bytes()))
	if err != nil {
		return "", err
	}
	base, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{Architecture: "amd64", OS: "linux", RootFS: v1.RootFS{Type: "layers"}})
	if err != nil {
		return "", err
	}
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return "", err
	}
	tag, err := name.NewTag(corruptDiskRef)
	if err != nil {
		return "", err
	}
	os.MkdirAll(dir, 0o755)
	p := filepath.Join(dir, "h4-corrupt-disk.tar")
	return p, tarball.WriteToFile(p, tag, img)
}

// applyRuntimeClass creates deploy/runtimeclass-eve-vm.yaml as a user would.
func applyRuntimeClass(t *testing.T, ctx context.Context) {
	b, err := os.ReadFile(filepath.Join(env.root, "deploy", "runtimeclass-eve-vm.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rc nodev1.RuntimeClass
	if err := yaml.UnmarshalStrict(b, &rc); err != nil {
		t.Fatal(err)
	}
	_, err = env.cp.Client().NodeV1().RuntimeClasses().Create(ctx, &rc, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func vmPod(name, image string, mut func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			RuntimeClassName:              ptr.To(vm.Handler),
			TerminationGracePeriodSeconds: ptr.To[int64](30),
			Containers: []corev1.Container{{
				Name: "guest", Image: image, ImagePullPolicy: corev1.PullNever,
			}},
		},
	}
	if mut != nil {
		mut(p)
	}
	return p
}

// qemuOf lists the QEMU processes whose command line names dir.
func qemuOf(dir string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.HasPrefix(string(b), "qemu-system") || strings.Contains(strings.SplitN(string(b), "\x00", 2)[0], "qemu-system") {
			if strings.Contains(string(b), dir) {
				var pid int
				fmt.Sscan(e.Name(), &pid)
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// TestVMPods: VM pods through the real kubelet and scheduler (TCG unless
// the host has KVM): the guest's ready line in kubectl logs, HTTP to the
// pod IP answered by the guest, kubectl exec through the guest agent, a
// container pod beside it, kill -9 of the agent leaving the VM running and
// re-adopted, deletion leaving nothing behind, and the bad inputs refused
// with clear events.
func TestVMPods(t *testing.T) {
	needEnv(t)
	importVMImages(t, env.ctrd)
	ctx := testCtx(t, 25*time.Minute)
	cs := env.cp.Client()
	node := "edge-vm"
	d, sim := newSimDevice(t, node)
	// KVM off, as on the CI machines: this host's nested /dev/kvm makes VMs
	// but fails real guests in the firmware ("KVM internal error ...
	// emulation failure"), so the guests run under TCG.
	d.source = append(d.source, "--vm-cni-conf-dir="+env.ctrd.CNIConfDir(), "--vm-cni-bin-dir=/usr/lib/cni", "--vm-kvm-device=/nonexistent/kvm")
	t.Log("the VM pods of this test run under QEMU software emulation (TCG), KVM turned off: slower than on a device with KVM (cri/vm TestVMLifecycleKVM, `make test-kvm`, covers KVM)")
	deleteNodeAtEnd(t, node)
	cl := simCluster(t, env.cp, "prod", "33333333-4444-4555-8666-777777777777")
	cl.ConfigItems[policy.KeyAllowVMEmulation] = "true"
	if err := sim.SetCluster(cl); err != nil {
		t.Fatal(err)
	}
	d.start()
	n := waitNodeReady(t, node, 3*time.Minute)
	if n.Labels[agent.LabelVMRuntime] != vm.Handler || n.Labels[agent.LabelKVM] != "false" {
		t.Fatalf("node labels %v lack %s=%s and %s=false", n.Labels, agent.LabelVMRuntime, vm.Handler, agent.LabelKVM)
	}
	applyRuntimeClass(t, ctx)

	// The VM pod, placed by the scheduler through the RuntimeClass's nodeSelector.
	created := time.Now()
	if _, err := cs.CoreV1().Pods("default").Create(ctx, vmPod("vm-guest", vmguest.DiskRef, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, context.Background(), cs, "vm-guest") })
	// A container pod beside it.
	if _, err := cs.CoreV1().Pods("default").Create(ctx, guardedPod("vm-neighbour", node, func(*corev1.Pod) {}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, context.Background(), cs, "vm-neighbour") })

	var pod *corev1.Pod
	waitFor(t, 5*time.Minute, "vm-guest Running", func() (bool, error) {
		p, err := cs.CoreV1().Pods("default").Get(ctx, "vm-guest", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pod = p
		return p.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s %v", p.Status.Phase, p.Status.ContainerStatuses)
	})
	toRunning := time.Since(created)
	waitFor(t, 5*time.Minute, "ready line in kubectl logs", func() (bool, error) {
		out, err := env.cp.Kubectl(ctx, "logs", "-n", "default", "vm-guest")
		return strings.Contains(out, vmguest.ReadyLine), fmt.Errorf("%v: %s", err, tail(out, 5))
	})
	t.Logf("VM pod (TCG unless KVM) create -> Running %v, create -> guest ready line %v", toRunning.Round(time.Millisecond), time.Since(created).Round(time.Millisecond))
	if pod.Spec.NodeName != node {
		t.Fatalf("VM pod scheduled on %q", pod.Spec.NodeName)
	}
	ip := pod.Status.PodIP
	var body string
	waitFor(t, time.Minute, "HTTP to the VM pod's IP", func() (bool, error) {
		c := http.Client{Timeout: 3 * time.Second}
		resp, err := c.Get("http://" + ip + "/")
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return strings.HasPrefix(body, "evelet-guest ") && strings.Contains(body, ip), fmt.Errorf("body %q", body)
	})
	out, err := env.cp.Kubectl(ctx, "exec", "-n", "default", "vm-guest", "--", "/bin/sh", "-c", "echo exec-in-guest $(hostname)")
	if err != nil || !strings.Contains(out, "exec-in-guest") {
		t.Errorf("kubectl exec in the guest: %v %q", err, out)
	}
	// The kubelet's summary (what kubectl top and eviction read) counts
	// the VM: its pod's memory includes the guest's RAM QEMU touched.
	waitFor(t, 2*time.Minute, "VM pod in the kubelet's stats summary", func() (bool, error) {
		raw, err := env.cp.Kubectl(ctx, "get", "--raw", "/api/v1/nodes/"+node+"/proxy/stats/summary")
		if err != nil {
			return false, err
		}
		var sum struct {
			Pods []struct {
				PodRef struct{ Name string } `json:"podRef"`
				Memory *struct {
					WorkingSetBytes uint64 `json:"workingSetBytes"`
				} `json:"memory"`
				CPU *struct {
					UsageCoreNanoSeconds uint64 `json:"usageCoreNanoSeconds"`
				} `json:"cpu"`
			} `json:"pods"`
		}
		if err := json.Unmarshal([]byte(raw), &sum); err != nil {
			return false, err
		}
		for _, p := range sum.Pods {
			if p.PodRef.Name == "vm-guest" && p.Memory != nil && p.CPU != nil {
				// The first samples (cAdvisor's housekeeping) may still be zero.
				if p.Memory.WorkingSetBytes > 64<<20 && p.CPU.UsageCoreNanoSeconds > 0 {
					t.Logf("vm-guest in /stats/summary: working set %d MiB, CPU %d ms", p.Memory.WorkingSetBytes>>20, p.CPU.UsageCoreNanoSeconds/1e6)
					return true, nil
				}
				return false, fmt.Errorf("memory %d cpu %d", p.Memory.WorkingSetBytes, p.CPU.UsageCoreNanoSeconds)
			}
		}
		return false, fmt.Errorf("vm-guest not in the summary")
	})

	// The guest powers itself off: the container exits 0 and the restart
	// policy (Always) starts a new one, from a fresh overlay.
	first := pod.Status.ContainerStatuses[0]
	env.cp.Kubectl(ctx, "exec", "-n", "default", "vm-guest", "--", "/bin/sh", "-c", "echo o > /proc/sysrq-trigger")
	waitFor(t, 5*time.Minute, "VM container restarted after the guest's power-off", func() (bool, error) {
		p, err := cs.CoreV1().Pods("default").Get(ctx, "vm-guest", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		s := p.Status.ContainerStatuses[0]
		last := s.LastTerminationState.Terminated
		ok := s.RestartCount == first.RestartCount+1 && s.ContainerID != first.ContainerID && s.State.Running != nil &&
			last != nil && last.ExitCode == 0 && last.ContainerID == first.ContainerID
		pod = p
		return ok, fmt.Errorf("status %+v", s)
	})
	waitFor(t, 5*time.Minute, "ready line of the restarted guest", func() (bool, error) {
		out, err := env.cp.Kubectl(ctx, "logs", "-n", "default", "vm-guest")
		return strings.Contains(out, vmguest.ReadyLine), fmt.Errorf("%v: %s", err, tail(out, 5))
	})

	runningPod := func(name string) *corev1.Pod {
		var p *corev1.Pod
		waitFor(t, 3*time.Minute, name+" Running", func() (bool, error) {
			var err error
			p, err = cs.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
			return err == nil && p.Status.Phase == corev1.PodRunning, err
		})
		return p
	}
	runningPod("vm-neighbour")

	// kill -9 of the agent (and with it the CRI shim and kubelet): the VM
	// runs on, and the restarted agent re-adopts it.
	before := pod.Status.ContainerStatuses[0]
	vmDir := filepath.Join(d.stateDir(), "vm", strings.TrimPrefix(before.ContainerID, "evelet://"))
	qemu := qemuOf(vmDir)
	if len(qemu) != 1 {
		t.Fatalf("QEMU processes for %s: %v", vmDir, qemu)
	}
	d.kill9()
	d.start()
	waitNodeReady(t, node, 3*time.Minute)
	waitFor(t, 2*time.Minute, "VM pod status after agent restart", func() (bool, error) {
		p, err := cs.CoreV1().Pods("default").Get(ctx, "vm-guest", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		s := p.Status.ContainerStatuses[0]
		return p.Status.Phase == corev1.PodRunning && s.ContainerID == before.ContainerID && s.RestartCount == before.RestartCount && s.State.Running != nil,
			fmt.Errorf("phase %s status %+v", p.Status.Phase, s)
	})
	if now := qemuOf(vmDir); len(now) != 1 || now[0] != qemu[0] {
		t.Errorf("QEMU after the agent's kill -9: %v, want the same %v", now, qemu)
	}
	// The new kubelet serves exec once it has synced the pod.
	waitFor(t, 2*time.Minute, "kubectl exec after the agent restart", func() (bool, error) {
		out, err := env.cp.Kubectl(ctx, "exec", "-n", "default", "vm-guest", "--", "/bin/sh", "-c", "echo again")
		return err == nil && strings.Contains(out, "again"), fmt.Errorf("%v: %s", err, tail(out, 3))
	})

	// Deleting leaves no QEMU, VM directory (overlay, sockets) or netns.
	deletePod(t, ctx, cs, "vm-guest")
	waitFor(t, 2*time.Minute, "VM gone", func() (bool, error) {
		_, err := os.Stat(vmDir)
		return len(qemuOf(vmDir)) == 0 && os.IsNotExist(err), fmt.Errorf("qemu %v dir %v", qemuOf(vmDir), err)
	})
	waitFor(t, time.Minute, "no netns left", func() (bool, error) {
		names, _ := readDirNames(filepath.Join(d.runDir(), "netns"))
		return len(names) == 0, fmt.Errorf("netns %v", names)
	})

	// Bad input: each a clear event, no container ran.
	bad := []struct {
		pod  *corev1.Pod
		want string
	}{
		{vmPod("vm-nodisk", images.BusyboxRef, nil), "has no VM disk"},
		{vmPod("vm-corrupt", corruptDiskRef, nil), "corrupt or unreadable disk image"},
		{vmPod("vm-small", vmguest.DiskRef, func(p *corev1.Pod) {
			p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("32Mi")}
		}), "below the minimum guest RAM"},
		{vmPod("vm-two", vmguest.DiskRef, func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "second", Image: vmguest.KernelRef, ImagePullPolicy: corev1.PullNever})
		}), `guardrail "vm-one-container"`},
	}
	for _, b := range bad {
		if _, err := cs.CoreV1().Pods("default").Create(ctx, b.pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitPodEvent(t, ctx, cs, b.pod.Name, b.want)
		deletePod(t, ctx, cs, b.pod.Name)
	}
	{
		items := map[string]string{"evelet.apiserver-url": env.cp.URL()} // emulation no longer allowed
		applied := strings.Count(d.log(), "config items applied")
		if err := sim.SetConfigItems(items); err != nil {
			t.Fatal(err)
		}
		waitFor(t, time.Minute, "policy without emulation applied", func() (bool, error) {
			return strings.Count(d.log(), "config items applied") > applied, nil
		})
		p := vmPod("vm-noemu", vmguest.DiskRef, nil)
		if _, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitPodEvent(t, ctx, cs, p.Name, "does not allow VM emulation")
		deletePod(t, ctx, cs, p.Name)
	}
	// The kubelet removes containers and sandboxes after the pods are gone
	// from the API.
	waitFor(t, 2*time.Minute, "no VM state left", func() (bool, error) {
		names, err := readDirNames(filepath.Join(d.stateDir(), "vm"))
		var left []string
		for _, n := range names {
			if n != "images" && n != "sandboxes" {
				left = append(left, n)
			}
		}
		sbs, _ := readDirNames(filepath.Join(d.stateDir(), "vm", "sandboxes"))
		return err == nil && len(left) == 0 && len(sbs) == 0, fmt.Errorf("containers %v sandboxes %v %v", left, sbs, err)
	})
}
