package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/tests/devnet"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/utils/ptr"
)

// TestOfflineReboot: a device whose link to the cluster is cut (its veth
// off the bridge, the apiserver untouched) is power-cycled and starts its
// pods again from the agent's local API cache: a pod with a ConfigMap
// volume and one with a Secret and a service account token run again
// within 30 s of the agent starting, volumes mounted, still offline. While
// it is cut off, one of its pods is deleted and the ConfigMap changed on
// the cluster side; once the link is back the node is Ready, the deleted
// pod's containers are gone from the device, the change reaches the other
// pod, the cached pods keep the containers started offline (none runs
// twice), and the Node has an EveletReconnected event.
func TestOfflineReboot(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 15*time.Minute)
	cs := env.cp.Client()
	d := env.devnet.NewDevice(t, 7, devnet.DeviceOptions{ControlPlane: env.cp, Evelet: env.evelet, Images: env.images})
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
	pods := []*corev1.Pod{cmPod, secPod, delPod}
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
	cmPod, secPod, delPod = pods[0], pods[1], pods[2]
	for _, p := range pods {
		waitFor(t, 3*time.Minute, p.Name+" Running", func() (bool, error) {
			got, err := cs.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return got.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s", got.Status.Phase)
		})
	}
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
	waitFor(t, 2*time.Minute, "the cached pods running again offline", func() (bool, error) {
		for _, p := range []*corev1.Pod{cmPod, secPod} {
			id, err := running(p)
			if err != nil || id == "" {
				return false, fmt.Errorf("%s: %v; agent log: %s", p.Name, err, tail(readFile(d.AgentLogPath()), 8))
			}
			offlineIDs[p.Name] = id
		}
		return true, nil
	})
	backIn := time.Since(upAt)
	t.Logf("offline power-cycle: agent start -> both pods running %v", backIn.Round(time.Millisecond))
	if backIn > 30*time.Second {
		t.Errorf("pods back %v after the agent started offline, want at most 30 s", backIn)
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
	waitFor(t, 2*time.Minute, "the pod deleted offline gone from the device", func() (bool, error) {
		id, err := running(delPod)
		return err == nil && id == "", fmt.Errorf("running %q %v", id, err)
	})
	waitFor(t, 3*time.Minute, "the ConfigMap change in the pod's volume", func() (bool, error) {
		out, err := rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: offlineIDs[cmPod.Name], Cmd: []string{"cat", "/cfg/k"}, Timeout: 30})
		if err != nil {
			return false, err
		}
		return string(out.Stdout) == "v2", fmt.Errorf("/cfg/k = %q", out.Stdout)
	})
	t.Logf("reconnect -> deleted pod gone and ConfigMap change applied %v", time.Since(reconnectAt).Round(time.Millisecond))
	// No pod twice, none restarted again: the cluster reports the
	// containers the kubelet started offline.
	for _, p := range []*corev1.Pod{cmPod, secPod} {
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
