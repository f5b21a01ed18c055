package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/dra"
	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/tests/evesim"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// testPort stands in for a serial port: a loop device over a file of the
// test, which EVE lists as the adapter's device node. A pod reads and
// writes the node; the test sees and sets the bytes in the file. (A pty
// cannot be used: its slave opens only through devpts, and runc makes a
// container's device nodes with mknod.)
type testPort struct {
	node, file string
}

const portBlock = 512

func newTestPort(t *testing.T, dir, greeting string) *testPort {
	t.Helper()
	f := filepath.Join(dir, "port.img")
	data := make([]byte, 1<<20)
	copy(data, greeting+"\n")
	if err := os.WriteFile(f, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", f).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v\n%s", err, out)
	}
	p := &testPort{node: strings.TrimSpace(string(out)), file: f}
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", p.node).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v\n%s", p.node, err, out)
		}
	})
	return p
}

// block returns the port's second block as the pod wrote it.
func (p *testPort) block() (string, error) {
	b, err := os.ReadFile(p.file)
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(b[portBlock:2*portBlock]), "\x00\n"), nil
}

func devicePod(name, node, claim, port string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			NodeSelector:                  map[string]string{"kubernetes.io/hostname": node},
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			ResourceClaims:                []corev1.PodResourceClaim{{Name: "port", ResourceClaimName: ptr.To(claim)}},
			Containers: []corev1.Container{{
				Name: "main", Image: images.BusyboxRef, ImagePullPolicy: corev1.PullNever,
				// Read the port's first block, then answer in its second
				// (direct I/O: no page cache between the pod and the port).
				Command: []string{"sh", "-c", fmt.Sprintf(`dd if=%[1]s bs=%[2]d count=1 iflag=direct | head -n1 > /tmp/got; `+
					`echo "hello from %[3]s" | dd of=%[1]s bs=%[2]d seek=1 conv=sync oflag=direct; sleep 3600`, port, portBlock, name)},
				Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "port"}}},
			}},
		},
	}
}

func serialClaim(name string) *resourceapi.ResourceClaim {
	return &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{
			Name: "serial", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: "eve-serial"},
		}}}},
	}
}

// nodeDevices lists the devices of the driver's ResourceSlices of node.
func nodeDevices(ctx context.Context, cs kubernetes.Interface, node string) ([]resourceapi.Device, error) {
	sl, err := cs.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return nil, err
	}
	var out []resourceapi.Device
	for _, s := range sl.Items {
		if s.Spec.Driver == dra.DriverName {
			out = append(out, s.Spec.Devices...)
		}
	}
	return out, nil
}

// TestDeviceClaims: the owner gives a serial port to Kubernetes
// (evelet.policy.devices); evelet's DRA driver publishes it in the node's
// ResourceSlice; a pod with a ResourceClaim gets the device node and talks
// through it; a second claim for the same port waits unallocated; the owner
// withdraws the port: the pod is evicted with an Event and the slice
// shrinks; a pod naming the port as a hostPath is still refused.
func TestDeviceClaims(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 15*time.Minute)
	cs := env.cp.Client()
	d, sim := newSimDevice(t, "DRA Device")
	node := "dra-device"
	deleteNodeAtEnd(t, node)
	port := newTestPort(t, d.dir, "hello from the test")
	other := "/dev/ttyS3" // listed by EVE, never assigned
	if err := sim.PublishAdapters([]evesim.Adapter{
		{Type: 3, Phylabel: "COM1", Logicallabel: "COM1", Serial: port.node},
		{Type: 3, Phylabel: "COM2", Logicallabel: "COM2", Serial: other},
	}); err != nil {
		t.Fatal(err)
	}
	if out, err := env.cp.Kubectl(ctx, "apply", "-f", filepath.Join(env.root, "deploy", "dra-deviceclasses.yaml")); err != nil {
		t.Fatalf("DeviceClasses: %v\n%s", err, out)
	}
	cl := simCluster(t, env.cp, "prod", "33333333-4444-4555-8666-777777777777")
	if err := sim.SetCluster(cl); err != nil {
		t.Fatal(err)
	}
	d.start()
	waitNodeReady(t, node, 3*time.Minute)
	// Nothing assigned: the driver is off, no slice (and the agent's RSS
	// without it, for docs/benchmarks.md).
	rssWithout := settledRSSKB(d.cmd.Process.Pid)
	if devs, err := nodeDevices(ctx, cs, node); err != nil || len(devs) != 0 {
		t.Fatalf("devices offered before the owner assigned any: %+v (%v)", devs, err)
	}
	items := map[string]string{"evelet.apiserver-url": env.cp.URL(), "evelet.policy.devices": "COM1"}
	if err := sim.SetConfigItems(items); err != nil {
		t.Fatal(err)
	}

	waitFor(t, 2*time.Minute, "the node's ResourceSlice offers COM1 only", func() (bool, error) {
		devs, err := nodeDevices(ctx, cs, node)
		if err != nil || len(devs) != 1 {
			return false, fmt.Errorf("devices %+v (%v)", devs, err)
		}
		a := devs[0].Attributes
		ok := devs[0].Name == "com1" && a["class"].StringValue != nil && *a["class"].StringValue == "serial" &&
			a["adapter"].StringValue != nil && *a["adapter"].StringValue == "COM1"
		return ok, fmt.Errorf("device %+v", devs[0])
	})
	t.Logf("agent RSS: %d kB with no device assigned, %d kB with the DRA driver offering one", rssWithout, settledRSSKB(d.cmd.Process.Pid))

	cleanup := func(kind, name string) {
		t.Cleanup(func() {
			c := context.Background()
			switch kind {
			case "pod":
				cs.CoreV1().Pods("default").Delete(c, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
			case "claim":
				cs.ResourceV1().ResourceClaims("default").Delete(c, name, metav1.DeleteOptions{})
			}
		})
	}
	for _, c := range []string{"serial-a", "serial-b"} {
		if _, err := cs.ResourceV1().ResourceClaims("default").Create(ctx, serialClaim(c), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		cleanup("claim", c)
	}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, devicePod("dra-a", node, "serial-a", port.node), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cleanup("pod", "dra-a")
	t0 := time.Now()
	waitFor(t, 4*time.Minute, "dra-a answered through its claimed port", func() (bool, error) {
		b, err := port.block()
		return b == "hello from dra-a", fmt.Errorf("port holds %q (%v)", b, err)
	})
	t.Logf("the pod wrote through its claimed port %v after it was created", time.Since(t0).Round(time.Millisecond))
	if ev, err := cs.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=dra-a"}); err == nil {
		for _, e := range ev.Items {
			t.Logf("dra-a event %s %s: %s", e.LastTimestamp.Format(time.TimeOnly), e.Reason, e.Message)
		}
	}
	waitFor(t, time.Minute, "dra-a read the test's line from its port", func() (bool, error) {
		out, err := env.cp.Kubectl(ctx, "exec", "-n", "default", "dra-a", "--", "/bin/busybox", "cat", "/tmp/got")
		return strings.TrimSpace(out) == "hello from the test", fmt.Errorf("%q (%v)", out, err)
	})
	out, err := env.cp.Kubectl(ctx, "exec", "-n", "default", "dra-a", "--", "/bin/busybox", "env")
	if err != nil || !strings.Contains(out, "EVE_DEVICE_COM1_PATH="+port.node) {
		t.Errorf("dra-a's environment lacks its device: %v\n%s", err, out)
	}

	// The port is taken: a second claim for it waits, unallocated.
	if _, err := cs.CoreV1().Pods("default").Create(ctx, devicePod("dra-b", node, "serial-b", port.node), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cleanup("pod", "dra-b")
	waitPodEventReason(t, ctx, "dra-b", "FailedScheduling", "cannot allocate all claims", 2*time.Minute)
	if c, err := cs.ResourceV1().ResourceClaims("default").Get(ctx, "serial-b", metav1.GetOptions{}); err != nil || c.Status.Allocation != nil {
		t.Fatalf("second claim for the same port: allocation %+v (%v)", c.Status.Allocation, err)
	}

	// The owner takes the port back: the pod holding it is evicted with
	// an Event, and the slice no longer offers it.
	if err := sim.SetConfigItems(map[string]string{"evelet.apiserver-url": env.cp.URL()}); err != nil {
		t.Fatal(err)
	}
	waitPodEventReason(t, ctx, "dra-a", dra.ReasonDeviceWithdrawn, "COM1", 2*time.Minute)
	waitFor(t, 2*time.Minute, "dra-a evicted", func() (bool, error) {
		_, err := cs.CoreV1().Pods("default").Get(ctx, "dra-a", metav1.GetOptions{})
		return apierrors.IsNotFound(err), err
	})
	waitFor(t, time.Minute, "the slice offers no device", func() (bool, error) {
		devs, err := nodeDevices(ctx, cs, node)
		return err == nil && len(devs) == 0, fmt.Errorf("devices %+v (%v)", devs, err)
	})
	if p, err := cs.CoreV1().Pods("default").Get(ctx, "dra-b", metav1.GetOptions{}); err != nil || p.Spec.NodeName != "" {
		t.Errorf("dra-b was placed on %q after the port was withdrawn (%v)", p.Spec.NodeName, err)
	}
	deletePod(t, ctx, cs, "dra-b")

	// Naming the port directly is still refused.
	direct := sleeperPod("dra-direct", node)
	direct.Spec.Volumes = []corev1.Volume{{Name: "port", VolumeSource: corev1.VolumeSource{
		HostPath: &corev1.HostPathVolumeSource{Path: port.node, Type: ptr.To(corev1.HostPathBlockDev)}}}}
	direct.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "port", MountPath: "/dev/ttyS9"}}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, direct, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cleanup("pod", "dra-direct")
	waitPodEvent(t, ctx, cs, "dra-direct", `evelet guardrail "no-host-path"`)
	deletePod(t, ctx, cs, "dra-direct")
}
