package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/policy"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// TestVolumeEscapes: the ways in of issue 15, each through the real kubelet
// on a default-policy device: a local PersistentVolume on the kubelet's
// pod-logs directory (planting log links containerd and the log rotation
// would follow as root), one on the kubelet's pods/ directory, an nfs
// volume (the kubelet would run mount on the device), and a Memory
// emptyDir of 1Pi. Each is refused at volume setup (a FailedMount event
// naming the rule) before any container starts, and the device is
// unchanged: a root-only canary, the node's credentials, the kubelet's log
// and pods directories, and the mounts under the device's directory.
func TestVolumeEscapes(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 20*time.Minute)
	cs := env.cp.Client()
	node := "edge-volume-escapes"
	d, sim := newSimDevice(t, node)
	deleteNodeAtEnd(t, node)
	if err := sim.SetCluster(simCluster(t, env.cp, "prod", "33333333-4444-4555-8666-777777777777")); err != nil {
		t.Fatal(err)
	}
	d.start()
	waitNodeReady(t, node, 3*time.Minute)
	kubeletRoot := filepath.Join(d.stateDir(), "kubelet", "root")
	podsDir := filepath.Join(kubeletRoot, "pods")
	logsDir := filepath.Join(d.stateDir(), "logs", "pods")

	// A root-only host file in the role of the kubelet's client key.
	canary := filepath.Join(d.dir, "device-key.pem")
	secret := make([]byte, 16)
	rand.Read(secret)
	if err := os.WriteFile(canary, []byte(hex.EncodeToString(secret)), 0o600); err != nil {
		t.Fatal(err)
	}
	// The kubelet's serving certificate arrives once its CSR is approved,
	// after the node is Ready: wait for it, so the credentials are still.
	waitFor(t, 2*time.Minute, "the kubelet's serving certificate", func() (bool, error) {
		_, err := os.Stat(filepath.Join(d.credDir(), "pki", "kubelet-server-current.pem"))
		return err == nil, err
	})
	// And the kubelet's move onto the local API cache, which writes its
	// kubeconfig to the cache into the credentials.
	d.waitKubeletSettled(2 * time.Minute)
	watched := func() []string { return []string{d.credDir(), canary, logsDir} }
	before := snapshotDevice(t, d.dir, watched()...)
	podDirsBefore, _ := os.ReadDir(podsDir)

	localPV := func(t *testing.T, name, path string) {
		pv := &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
				AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
				StorageClassName:              "",
				PersistentVolumeSource:        corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: path}},
				NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
					MatchExpressions: []corev1.NodeSelectorRequirement{{Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}},
				}}}},
			},
		}
		if _, err := cs.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cs.CoreV1().PersistentVolumes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
		pvc := &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				StorageClassName: ptr.To(""),
				VolumeName:       name,
				Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			},
		}
		if _, err := cs.CoreV1().PersistentVolumeClaims("default").Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cs.CoreV1().PersistentVolumeClaims("default").Delete(context.Background(), name, metav1.DeleteOptions{})
		})
		waitFor(t, 2*time.Minute, "claim "+name+" bound", func() (bool, error) {
			c, err := cs.CoreV1().PersistentVolumeClaims("default").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return c.Status.Phase == corev1.ClaimBound, fmt.Errorf("phase %s", c.Status.Phase)
		})
	}
	claim := func(name string) corev1.Volume {
		return corev1.Volume{Name: "v", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: name}}}
	}
	attempt := func(t *testing.T, name, rule, knob string, mut func(*corev1.Pod)) {
		if _, err := cs.CoreV1().Pods("default").Create(ctx, guardedPod(name, node, mut), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitRefused(t, ctx, cs, name, rule, knob)
		wantFailedMount(t, ctx, cs, name, rule)
		deletePod(t, ctx, cs, name)
		waitFor(t, time.Minute, "the device unchanged after "+name, func() (bool, error) {
			if diff := before.diff(snapshotDevice(t, d.dir, watched()...)); diff != "" {
				return false, fmt.Errorf("%s", diff)
			}
			now, _ := os.ReadDir(podsDir)
			if len(now) != len(podDirsBefore) {
				return false, fmt.Errorf("kubelet pod directories: %d before, %d now", len(podDirsBefore), len(now))
			}
			return true, nil
		})
	}

	// The pod-logs directory, its own log directory by subPathExpr: the
	// container would plant links containerd (N.log) and the kubelet's
	// log rotation (N.log.<timestamp>) follow as root.
	t.Run("local PV on the pod-logs directory", func(t *testing.T) {
		localPV(t, "x-logs", logsDir)
		attempt(t, "x-logs", policy.RuleHostPath, "", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{claim("x-logs")}
			c := &p.Spec.Containers[0]
			c.Env = []corev1.EnvVar{
				{Name: "NS", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
				{Name: "POD", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
				{Name: "UID", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.uid"}}},
			}
			c.VolumeMounts = []corev1.VolumeMount{{Name: "v", MountPath: "/logs", SubPathExpr: "$(NS)_$(POD)_$(UID)"}}
			c.Command = []string{"sh", "-c", "mkdir -p /logs/c && ln -sf " + canary + " /logs/c/1.log && ln -sf " + canary +
				" /logs/c/0.log.00000000-000000; echo planted; sleep 3600"}
		})
	})

	t.Run("local PV on the kubelet's pods directory", func(t *testing.T) {
		localPV(t, "x-pods", podsDir)
		attempt(t, "x-pods", policy.RuleHostPath, "", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{claim("x-pods")}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "v", MountPath: "/pods"}}
		})
	})

	// The kubelet would run `mount -t nfs 127.0.0.1:/tmp ...` on the device.
	t.Run("nfs volume", func(t *testing.T) {
		attempt(t, "x-nfs", policy.RuleVolumePlugins, policy.KeyAllowedVolumePlugins, func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "v", VolumeSource: corev1.VolumeSource{NFS: &corev1.NFSVolumeSource{Server: "127.0.0.1", Path: "/tmp"}}}}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "v", MountPath: "/nfs"}}
		})
		if out := kubeletLogLines(d, "mount -t nfs", "Mounting command: mount"); out != "" {
			t.Errorf("the kubelet ran mount for the nfs volume:\n%s", out)
		}
	})

	t.Run("Memory emptyDir of 1Pi", func(t *testing.T) {
		attempt(t, "x-mem", policy.RuleUnboundedMemoryVolume, policy.KeyAllowUnboundedMemoryVolumes, func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "v", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
				Medium: corev1.StorageMediumMemory, SizeLimit: ptr.To(resource.MustParse("1Pi"))}}}}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "v", MountPath: "/mem"}}
		})
	})

	if b, err := os.ReadFile(canary); err != nil || string(b) != hex.EncodeToString(secret) {
		t.Errorf("canary: %q %v", b, err)
	}
}

// wantFailedMount checks the refusal came at volume setup: a FailedMount
// event names the rule (a refusal at the CRI comes after the kubelet
// mounted the pod's volumes on the device).
func wantFailedMount(t *testing.T, ctx context.Context, cs kubernetes.Interface, name, rule string) {
	t.Helper()
	ev, err := cs.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, e := range ev.Items {
		if e.Reason == "FailedMount" && strings.Contains(e.Message, fmt.Sprintf("evelet guardrail %q", rule)) {
			return
		}
		seen = append(seen, e.Reason+": "+e.Message)
	}
	t.Errorf("%s: no FailedMount event naming %s: %q", name, rule, seen)
}

// kubeletLogLines returns the lines of the device's log with any of the
// pieces.
func kubeletLogLines(d *device, pieces ...string) string {
	var out []string
	for _, l := range strings.Split(d.log(), "\n") {
		for _, p := range pieces {
			if strings.Contains(l, p) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
