package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/images/vmguest"
	"github.com/lf-edge/evelet/images/vmguest/vmguesttest"
	"github.com/lf-edge/evelet/internal/layout"
	"github.com/lf-edge/evelet/policy"
	"github.com/lf-edge/evelet/tests/devnet"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/utils/ptr"
)

// TestOfflineReboot: a device whose link to the cluster is cut (its veth
// off the bridge, the apiserver untouched) is power-cycled and starts its
// pods again from the agent's local API cache: a pod with a ConfigMap
// volume, one with a Secret and a service account token and a VM pod (QEMU
// under TCG, on the pod network) run again within 30 s of the agent
// starting (the VM: its guest's ready line), volumes mounted, still
// offline. While it is cut off, one of its pods is deleted and the
// ConfigMap changed on the cluster side, and the outage outlasts the
// node-monitor grace period: a pod with a short unreachable toleration is
// evicted by the taint manager, one tolerating it forever stays bound.
// Once the link is back the node is Ready, the deleted and the evicted
// pods' containers are gone from the device (the evicted pod's deletion
// completes), the change reaches the other pod, the cached pods (the VM
// pod included) keep the containers started offline (none runs twice, no
// guest boots again), and the Node has an EveletReconnected event.
func TestOfflineReboot(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 15*time.Minute)
	cs := env.cp.Client()
	// The VM pod's network is the device's pod network: the agent gets
	// containerd's CNI configuration, whose directory is known once the
	// device exists, through a link made before the agent starts.
	vmCNI := filepath.Join(t.TempDir(), "net.d")
	d := env.devnet.NewDevice(t, 7, devnet.DeviceOptions{ControlPlane: env.cp, Evelet: env.evelet, NoJoin: true,
		Images:    append(slices.Clone(env.images), vmguesttest.Images(t).KernelTar),
		AgentArgs: []string{"--vm-cni-conf-dir=" + vmCNI, "--vm-cni-bin-dir=/usr/lib/cni", "--vm-kvm-device=/nonexistent/kvm", "--kube-proxy"}})
	if err := os.Symlink(filepath.Join(d.PersistDir(), "containerd", "cni", "net.d"), vmCNI); err != nil {
		t.Fatal(err)
	}
	t.Log("the VM pod runs under QEMU software emulation (TCG), KVM turned off as on the CI machines")
	cl, err := d.Cluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cl.ConfigItems[policy.KeyAllowVMEmulation] = "true"
	if err := d.EVE().SetCluster(cl); err != nil {
		t.Fatal(err)
	}
	applyRuntimeClass(t, ctx)
	applyNodeReadBindings(t, ctx)
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WaitReady(ctx, 4*time.Minute); err != nil {
		t.Fatal(err)
	}
	sfx := strconv.FormatInt(time.Now().UnixNano()%1_000_000, 36)
	ns := "default"
	cmName, secName := "off-cfg-"+sfx, "off-sec-"+sfx
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: cmName}, Data: map[string]string{"k": "v1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secName}, StringData: map[string]string{"s": "secret1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.CoreV1().ConfigMaps(ns).Delete(ctx, cmName, metav1.DeleteOptions{})
		cs.CoreV1().Secrets(ns).Delete(ctx, secName, metav1.DeleteOptions{})
	})
	mk := func(name string, vol corev1.Volume, mount string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name + "-" + sfx, Namespace: ns},
			Spec: corev1.PodSpec{
				NodeName: d.NodeName(), TerminationGracePeriodSeconds: ptr.To[int64](2),
				Containers: []corev1.Container{{Name: "main", Image: images.BusyboxRef, ImagePullPolicy: corev1.PullNever,
					Command:      []string{"sh", "-c", "exec sleep 3600"},
					VolumeMounts: []corev1.VolumeMount{{Name: vol.Name, MountPath: mount}}}},
				Volumes: []corev1.Volume{vol},
			},
		}
	}
	cmPod := mk("off-cm", corev1.Volume{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: cmName}}}}, "/cfg")
	secPod := mk("off-sec", corev1.Volume{Name: "sec", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: secName}}}, "/sec")
	delPod := mk("off-del", corev1.Volume{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: cmName}}}}, "/cfg")
	// Cluster side of a long outage: one pod stays bound whatever its
	// length (tolerates unreachable without tolerationSeconds, as
	// deploy/stay-bound adds).
	scratch := corev1.Volume{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}
	stayPod := mk("off-stay", scratch, "/scratch")
	stayPod.Labels = map[string]string{"app": "off-stay-" + sfx}
	stayPod.Spec.Tolerations = []corev1.Toleration{
		{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
		{Key: corev1.TaintNodeNotReady, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
	}
	vmP := vmPod("off-vm-"+sfx, vmguest.KernelRef, func(p *corev1.Pod) {
		p.Spec.NodeName, p.Spec.TerminationGracePeriodSeconds = d.NodeName(), ptr.To[int64](2)
	})
	pods := []*corev1.Pod{cmPod, secPod, delPod, vmP, stayPod}
	for i, p := range pods {
		created, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pods[i] = created
		t.Cleanup(func() {
			cs.CoreV1().Pods(ns).Delete(ctx, created.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		})
	}
	cmPod, secPod, delPod, vmP, stayPod = pods[0], pods[1], pods[2], pods[3], pods[4]
	// And a Deployment's pod the taint manager evicts after evictAfter
	// (standing for the default 300 s; the shared control plane's
	// node-monitor grace period is 20 s, main_test.go). Its replacement
	// runs on a second device. That one is also why evictions happen at
	// all: with every node of the cluster unreachable the node lifecycle
	// controller evicts nothing (docs/offline.md).
	evictDep, evictPod, d2 := evictedDeployment(t, ctx, d, sfx)
	for _, p := range pods {
		waitFor(t, 3*time.Minute, p.Name+" Running", func() (bool, error) {
			got, err := cs.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return got.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s", got.Status.Phase)
		})
	}
	// The VM pod's guest is up: its ready line in the serial console log,
	// seen through evelet's own CRI (containerd does not know VM pods).
	ecri, err := grpc.NewClient("unix://"+layout.Run{Dir: d.EveletRunDir()}.CRISocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer ecri.Close()
	ers := runtimeapi.NewRuntimeServiceClient(ecri)
	var vmBefore guestRun
	waitFor(t, 5*time.Minute, "the VM pod's guest ready line", func() (bool, error) {
		g, err := runningGuest(ctx, ers, vmP.UID)
		vmBefore = g
		return err == nil && g.ready > 0, fmt.Errorf("%+v %v", g, err)
	})
	// kube-proxy and the node DNS read Services through the cache too.
	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "off-svc-" + sfx},
		Spec: corev1.ServiceSpec{Selector: stayPod.Labels, Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.CoreV1().Services(ns).Delete(context.Background(), svc.Name, metav1.DeleteOptions{}) })
	svcName := svc.Name + "." + ns + ".svc.cluster.local"
	for _, f := range []string{filepath.Join(d.EveletRunDir(), "kube-proxy", "config.yaml"), filepath.Join(d.EveletRunDir(), "nodedns", "Corefile")} {
		waitFor(t, time.Minute, f+" naming a kubeconfig to the API cache", func() (bool, error) {
			b := readFile(f)
			return strings.Contains(b, "-apicache.kubeconfig"), fmt.Errorf("%s", b)
		})
	}
	serviceWorks := func(what, ctr string) {
		t.Helper()
		waitFor(t, time.Minute, "kube-proxy's rules for the Service "+what, func() (bool, error) {
			out, err := netnsOut(d, "nft", "list", "table", "ip", "kube-proxy")
			return err == nil && strings.Contains(out, svc.Spec.ClusterIP), fmt.Errorf("%v: %s", err, tail(out, 5))
		})
		waitFor(t, time.Minute, "the Service's name resolving in a pod "+what, func() (bool, error) {
			out, err := ers.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: ctr, Cmd: []string{"/bin/busybox", "nslookup", svcName}, Timeout: 10})
			if err != nil {
				return false, err
			}
			return strings.Contains(string(out.Stdout), svc.Spec.ClusterIP), fmt.Errorf("%s%s", out.Stdout, out.Stderr)
		})
	}

	got, err := cs.CoreV1().Pods(ns).Get(ctx, cmPod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	serviceWorks("online", strings.TrimPrefix(containerID(got), "evelet://"))
	// The cache holds what the kubelet read.
	if _, err := d.WaitStatus(ctx, time.Minute, "the API cache online and filled", func(s *agent.Status) bool {
		return s.APICache != nil && s.APICache.Online && s.APICache.Objects >= 6
	}); err != nil {
		t.Fatal(err)
	}

	// Cut the link, then power-cycle.
	if err := d.SetLink(false); err != nil {
		t.Fatal(err)
	}
	cutAt := time.Now()
	linkUp := false
	defer func() {
		if !linkUp {
			d.SetLink(true)
		}
	}()
	if err := d.Reboot(devnet.RebootOptions{}); err != nil {
		t.Fatal(err)
	}
	upAt := time.Now() // the agent has just started
	conn, err := d.Containerd().DialCRI()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	running := func(p *corev1.Pod) (string, error) {
		cts, err := rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
			State:         &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
			LabelSelector: map[string]string{"io.kubernetes.pod.uid": string(p.UID)}}})
		if err != nil {
			return "", err
		}
		switch len(cts.Containers) {
		case 0:
			return "", nil
		case 1:
			return cts.Containers[0].Id, nil
		}
		return "", fmt.Errorf("%d running containers of %s", len(cts.Containers), p.Name)
	}
	offlineIDs := map[string]string{}
	var ctrsIn time.Duration
	var vmOffline guestRun
	waitFor(t, 2*time.Minute, "the cached pods running again offline", func() (bool, error) {
		for _, p := range []*corev1.Pod{cmPod, secPod, stayPod, evictPod} {
			if offlineIDs[p.Name] != "" {
				continue
			}
			id, err := running(p)
			if err != nil || id == "" {
				return false, fmt.Errorf("%s: %v; agent log: %s", p.Name, err, tail(readFile(d.AgentLogPath()), 8))
			}
			offlineIDs[p.Name] = id
		}
		if ctrsIn == 0 {
			ctrsIn = time.Since(upAt)
		}
		if vmOffline.id == "" {
			g, err := runningGuest(ctx, ers, vmP.UID)
			if err != nil || !g.bootedAfter(vmBefore) {
				return false, fmt.Errorf("VM pod: guest %+v (before the reboot %+v) %v; agent log: %s", g, vmBefore, err, tail(readFile(d.AgentLogPath()), 8))
			}
			vmOffline = g
		}
		return true, nil
	})
	vmStartIn, vmReadyIn := vmOffline.started.Sub(upAt), vmOffline.readyAt.Sub(upAt)
	t.Logf("offline power-cycle: agent start -> container pods running %v, -> VM pod's QEMU started %v, -> its guest's ready line %v (TCG boot %v; before the cut %v)",
		ctrsIn.Round(time.Millisecond), vmStartIn.Round(time.Millisecond), vmReadyIn.Round(time.Millisecond), vmOffline.boot().Round(time.Millisecond), vmBefore.boot().Round(time.Millisecond))
	if ctrsIn > 30*time.Second || vmStartIn > 30*time.Second {
		t.Errorf("pods back %v (containers) and %v (VM started) after the agent started offline, want at most 30 s", ctrsIn, vmStartIn)
	}
	// The guest's own boot under software emulation on a loaded 2-core
	// machine (10-20 s here, 1-3 s with KVM) is the guest's, not the
	// node's: it is allowed on top, as long as its first boot took.
	if vmReadyIn > 30*time.Second+vmBefore.boot() {
		t.Errorf("VM guest ready %v after the agent started offline, want at most 30 s + its first boot's %v", vmReadyIn, vmBefore.boot())
	}
	if rss := procRSS(d.AgentPID()); rss != "" {
		t.Logf("agent RSS with the cache, offline: %s", rss)
	}
	st, err := d.Status()
	if err != nil || st.APICache == nil || st.APICache.Online || st.APICache.Hits == 0 {
		t.Fatalf("status while cut off: want the API cache offline with hits, got %+v (%v)", st, err)
	}
	if _, err := cs.CoreV1().Nodes().Get(ctx, d.NodeName(), metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	exec := func(id string, cmd ...string) string {
		out, err := rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 30})
		if err != nil || out.ExitCode != 0 {
			t.Fatalf("%v in %s: %v %+v", cmd, id, err, out)
		}
		return string(out.Stdout)
	}
	if got := exec(offlineIDs[cmPod.Name], "cat", "/cfg/k"); got != "v1" {
		t.Errorf("ConfigMap volume offline: %q, want v1", got)
	}
	if got := exec(offlineIDs[secPod.Name], "cat", "/sec/s"); got != "secret1" {
		t.Errorf("Secret volume offline: %q, want secret1", got)
	}
	if tok := exec(offlineIDs[secPod.Name], "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"); len(strings.Split(tok, ".")) != 3 {
		t.Errorf("service account token offline: %q", tok)
	}

	serviceWorks("offline after the power-cycle", offlineIDs[cmPod.Name])

	// The cluster side moves on while the device is cut off.
	if err := cs.CoreV1().Pods(ns).Delete(ctx, delPod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, cmName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["k"] = "v2"
	if _, err := cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The outage outlasts the grace period and the short toleration: the
	// node is unreachable and tainted, the taint manager evicts evictPod
	// (deletion begun, waiting for the kubelet) and its replacement runs
	// on the second device; stayPod stays bound.
	waitFor(t, 3*time.Minute, evictPod.Name+" evicted by the taint manager", func() (bool, error) {
		got, err := cs.CoreV1().Pods(ns).Get(ctx, evictPod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return got.DeletionTimestamp != nil, fmt.Errorf("not evicted yet (%s cut off)", time.Since(cutAt).Round(time.Second))
	})
	evictedAfter := time.Since(cutAt)
	node, err := cs.CoreV1().Nodes().Get(ctx, d.NodeName(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(node.Spec.Taints, func(tn corev1.Taint) bool {
		return tn.Key == corev1.TaintNodeUnreachable && tn.Effect == corev1.TaintEffectNoExecute
	}) {
		t.Errorf("node cut off without the unreachable NoExecute taint: %v", node.Spec.Taints)
	}
	t.Logf("cut off %v: node tainted unreachable, %s evicted", evictedAfter.Round(time.Second), evictPod.Name)
	waitFor(t, 2*time.Minute, "the evicted pod's replacement Running on "+d2.NodeName(), func() (bool, error) {
		ps := depPods(t, ctx, evictDep)
		for _, p := range ps {
			if p.UID != evictPod.UID && p.Spec.NodeName == d2.NodeName() && p.Status.Phase == corev1.PodRunning {
				return true, nil
			}
		}
		return false, fmt.Errorf("pods %v", podSummary(ps))
	})
	if got, err := cs.CoreV1().Pods(ns).Get(ctx, stayPod.Name, metav1.GetOptions{}); err != nil || got.UID != stayPod.UID ||
		got.DeletionTimestamp != nil || got.Spec.NodeName != d.NodeName() {
		t.Errorf("%s after %v cut off: %v %+v, want it bound to %s and not being deleted", stayPod.Name, evictedAfter, err, got.ObjectMeta, d.NodeName())
	}
	// Still offline: the deleted pod was in the cache and runs too.
	if id, err := running(delPod); err != nil || id == "" {
		t.Logf("deleted pod before reconnect: %q %v", id, err)
	}

	if err := d.SetLink(true); err != nil {
		t.Fatal(err)
	}
	linkUp = true
	reconnectAt := time.Now()
	if _, err := d.WaitReadyAfter(ctx, reconnectAt, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	readyIn := time.Since(reconnectAt)
	waitFor(t, 2*time.Minute, "the pod deleted offline gone from the device", func() (bool, error) {
		id, err := running(delPod)
		return err == nil && id == "", fmt.Errorf("running %q %v", id, err)
	})
	goneIn := time.Since(reconnectAt)
	// The evicted pod does not run twice: the kubelet stops it and
	// completes its deletion.
	waitFor(t, 2*time.Minute, "the evicted pod gone from the device and the cluster", func() (bool, error) {
		id, err := running(evictPod)
		if err != nil || id != "" {
			return false, fmt.Errorf("running %q %v", id, err)
		}
		_, err = cs.CoreV1().Pods(ns).Get(ctx, evictPod.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Errorf("pod object: %v", err)
	})
	if ps := depPods(t, ctx, evictDep); len(ps) != 1 || ps[0].Spec.NodeName != d2.NodeName() || ps[0].Status.Phase != corev1.PodRunning {
		t.Errorf("%s after the device came back: pods %v, want one Running on %s", evictDep, podSummary(ps), d2.NodeName())
	}
	waitFor(t, 3*time.Minute, "the ConfigMap change in the pod's volume", func() (bool, error) {
		out, err := rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: offlineIDs[cmPod.Name], Cmd: []string{"cat", "/cfg/k"}, Timeout: 30})
		if err != nil {
			return false, err
		}
		return string(out.Stdout) == "v2", fmt.Errorf("/cfg/k = %q", out.Stdout)
	})
	t.Logf("reconnect -> node Ready %v, -> deleted pod gone %v, -> ConfigMap change applied %v", readyIn.Round(time.Millisecond), goneIn.Round(time.Millisecond), time.Since(reconnectAt).Round(time.Millisecond))
	// No pod twice, none restarted again: the cluster reports the
	// containers the kubelet started offline.
	for _, p := range []*corev1.Pod{cmPod, secPod, stayPod} {
		waitFor(t, time.Minute, p.Name+" reported with its offline container", func() (bool, error) {
			got, err := cs.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			want := "://" + offlineIDs[p.Name]
			return got.UID == p.UID && got.Status.Phase == corev1.PodRunning && strings.HasSuffix(containerID(got), want),
				fmt.Errorf("uid %s phase %s container %q, want %q", got.UID, got.Status.Phase, containerID(got), want)
		})
		if id, err := running(p); err != nil || id != offlineIDs[p.Name] {
			t.Errorf("%s on the device after reconnect: running %q (%v), want only %q", p.Name, id, err, offlineIDs[p.Name])
		}
	}
	// The VM pod too: reported with the VM started offline, one guest,
	// not booted again since.
	waitFor(t, time.Minute, vmP.Name+" reported with its offline VM", func() (bool, error) {
		got, err := cs.CoreV1().Pods(ns).Get(ctx, vmP.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		want := "://" + vmOffline.id
		return got.UID == vmP.UID && got.Status.Phase == corev1.PodRunning && strings.HasSuffix(containerID(got), want),
			fmt.Errorf("uid %s phase %s container %q, want %q", got.UID, got.Status.Phase, containerID(got), want)
	})
	if g, err := runningGuest(ctx, ers, vmP.UID); err != nil || g.id != vmOffline.id || g.ready != vmOffline.ready {
		t.Errorf("VM pod after reconnect: %+v (%v), want only the guest started offline, %+v, not booted again", g, err, vmOffline)
	}
	if _, err := cs.CoreV1().Pods(ns).Get(ctx, delPod.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("deleted pod came back: %v", err)
	}
	waitFor(t, time.Minute, "an EveletReconnected event on the Node", func() (bool, error) {
		evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + d.NodeName() + ",reason=EveletReconnected"})
		return err == nil && len(evs.Items) > 0, err
	})
	if _, err := d.WaitStatus(ctx, time.Minute, "the API cache online again", func(s *agent.Status) bool {
		return s.APICache != nil && s.APICache.Online && s.APICache.Reconnects > 0
	}); err != nil {
		t.Error(err)
	}
}

// evictedDeployment starts a second device (cordoned until the pod is
// placed) and a Deployment whose one pod runs on d with a short unreachable
// toleration and may move to the second device; it returns the
// Deployment's name, its pod on d and the second device (uncordoned).
func evictedDeployment(t *testing.T, ctx context.Context, d *devnet.Device, sfx string) (string, *corev1.Pod, *devnet.Device) {
	t.Helper()
	cs := env.cp.Client()
	d2 := env.devnet.NewDevice(t, 8, devnet.DeviceOptions{ControlPlane: env.cp, Evelet: env.evelet, Images: env.images})
	if err := d2.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.WaitReady(ctx, 4*time.Minute); err != nil {
		t.Fatal(err)
	}
	cordon := func(on bool) {
		patch := fmt.Sprintf(`{"spec":{"unschedulable":%t}}`, on)
		if _, err := cs.CoreV1().Nodes().Patch(ctx, d2.NodeName(), types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	cordon(true)
	const evictAfter = 5
	name := "off-evict-" + sfx
	dep := busyboxDeployment(name, d.NodeName(), "exec sleep 3600")
	spec := &dep.Spec.Template.Spec
	spec.NodeSelector = nil
	spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
			Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: []string{d.NodeName(), d2.NodeName()}}}}}}}}
	spec.Tolerations = []corev1.Toleration{
		{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](evictAfter)},
		{Key: corev1.TaintNodeNotReady, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](evictAfter)},
	}
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.AppsV1().Deployments("default").Delete(context.Background(), name, metav1.DeleteOptions{}) })
	var pod *corev1.Pod
	waitFor(t, 3*time.Minute, name+"'s pod Running on "+d.NodeName(), func() (bool, error) {
		ps := depPods(t, ctx, name)
		if len(ps) == 1 && ps[0].Status.Phase == corev1.PodRunning && ps[0].Spec.NodeName == d.NodeName() {
			pod = &ps[0]
			return true, nil
		}
		return false, fmt.Errorf("pods %v", podSummary(ps))
	})
	cordon(false)
	return name, pod, d2
}

// depPods lists the pods of Deployment app (busyboxDeployment's label).
func depPods(t *testing.T, ctx context.Context, app string) []corev1.Pod {
	t.Helper()
	l, err := env.cp.Client().CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

func podSummary(ps []corev1.Pod) []string {
	var out []string
	for _, p := range ps {
		s := p.Name + "@" + p.Spec.NodeName + ":" + string(p.Status.Phase)
		if p.DeletionTimestamp != nil {
			s += "(deleting)"
		}
		out = append(out, s)
	}
	return out
}

// guestRun is a VM pod's running VM as evelet's CRI shows it: its
// container, its serial console log and how many ready lines that log has.
type guestRun struct {
	id, log string
	ready   int
	// started is when QEMU started (CRI), readyAt the last ready line's
	// time (the CRI log's timestamp).
	started, readyAt time.Time
}

// boot is how long the guest took from QEMU's start to its ready line.
func (g guestRun) boot() time.Duration { return g.readyAt.Sub(g.started) }

// bootedAfter: g is another VM than before, and its guest printed its
// ready line (a log file it shares with before must have one more).
func (g guestRun) bootedAfter(before guestRun) bool {
	if g.id == "" || g.id == before.id {
		return false
	}
	if g.log == before.log {
		return g.ready > before.ready
	}
	return g.ready > 0
}

// runningGuest finds the running VM of pod uid; a zero guestRun when none
// runs, an error when more than one does.
func runningGuest(ctx context.Context, rs runtimeapi.RuntimeServiceClient, uid types.UID) (guestRun, error) {
	cts, err := rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		State:         &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
		LabelSelector: map[string]string{"io.kubernetes.pod.uid": string(uid)}}})
	if err != nil {
		return guestRun{}, err
	}
	switch len(cts.Containers) {
	case 0:
		return guestRun{}, nil
	case 1:
	default:
		return guestRun{}, fmt.Errorf("%d running VMs of pod %s", len(cts.Containers), uid)
	}
	id := cts.Containers[0].Id
	st, err := rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		return guestRun{id: id}, err
	}
	g := guestRun{id: id, log: st.Status.LogPath, started: time.Unix(0, st.Status.StartedAt)}
	for _, l := range strings.Split(readFile(g.log), "\n") {
		// CRI log lines: "<RFC 3339 time> stdout F <line>".
		if f := strings.SplitN(l, " ", 4); len(f) == 4 && f[3] == vmguest.ReadyLine {
			g.ready++
			g.readyAt, _ = time.Parse(time.RFC3339Nano, f[0])
		}
	}
	return g, nil
}

// applyNodeReadBindings lets nodes read what kube-proxy and the node DNS
// read (deploy/evelet-kube-proxy-rbac.yaml, deploy/evelet-nodedns-rbac.yaml)
// for the test's length: other tests check a node cannot without them.
func applyNodeReadBindings(t testing.TB, ctx context.Context) {
	t.Helper()
	dc, err := dynamic.NewForConfig(env.cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"evelet-kube-proxy-rbac.yaml", "evelet-nodedns-rbac.yaml"} {
		b, err := os.ReadFile(filepath.Join(env.root, "deploy", f))
		if err != nil {
			t.Fatal(err)
		}
		applyYAML(t, ctx, dc, b)
	}
	t.Cleanup(func() {
		rbac := env.cp.Client().RbacV1()
		for _, n := range []string{"evelet:node-proxier", "evelet-nodedns"} {
			rbac.ClusterRoleBindings().Delete(context.Background(), n, metav1.DeleteOptions{})
		}
		rbac.ClusterRoles().Delete(context.Background(), "evelet-nodedns", metav1.DeleteOptions{})
	})
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// procRSS is a process's resident set size as /proc reports it.
func procRSS(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			return strings.TrimSpace(strings.TrimPrefix(l, "VmRSS:"))
		}
	}
	return ""
}
