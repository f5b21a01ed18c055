package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/policy"
	"github.com/moby/sys/mountinfo"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// hostState is what an escape would change on the device: the mounts
// under the device's directory, the node's credentials and the files an
// attacker aims at, by bytes and mode.
type hostState struct {
	mounts []string          // "root point" of the mounts under the device, sorted
	files  map[string]string // path -> mode and sha of bytes
}

// snapshotDevice records the mounts at or under scope (the device's own
// directory: what its kubelet and runtime mount; a demo or another test
// running beside it does not count) and files.
func snapshotDevice(t *testing.T, scope string, files ...string) hostState {
	t.Helper()
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(scope))
	if err != nil {
		t.Fatal(err)
	}
	var st hostState
	for _, m := range infos {
		st.mounts = append(st.mounts, m.Root+" "+m.Mountpoint)
	}
	slices.Sort(st.mounts)
	st.files = map[string]string{}
	for _, p := range files {
		filepath.WalkDir(p, func(p string, de fs.DirEntry, err error) error {
			if err != nil {
				st.files[p] = "error: " + err.Error()
				return nil
			}
			// The local API cache (credentials/apicache) is the agent's
			// copy of the node's cluster objects, rewritten at every Lease
			// renewal: it changes by design. It is inside the protected
			// credentials directory, whose other files stay checked.
			if de.IsDir() && de.Name() == "apicache" && filepath.Base(filepath.Dir(p)) == "credentials" {
				return fs.SkipDir
			}
			fi, err := os.Lstat(p)
			if err != nil {
				st.files[p] = "error: " + err.Error()
				return nil
			}
			v := fi.Mode().String()
			if fi.Mode().IsRegular() {
				c, _ := os.ReadFile(p)
				v += " " + string(c)
			}
			st.files[p] = v
			return nil
		})
	}
	return st
}

// diff says how now differs from st, "" if not at all.
func (st hostState) diff(now hostState) string {
	var out []string
	for _, m := range now.mounts {
		if !slices.Contains(st.mounts, m) {
			out = append(out, "new mount "+m)
		}
	}
	for _, m := range st.mounts {
		if !slices.Contains(now.mounts, m) {
			out = append(out, "mount gone "+m)
		}
	}
	for p, v := range st.files {
		if now.files[p] != v {
			out = append(out, fmt.Sprintf("%s changed: %.60q -> %.60q", p, v, now.files[p]))
		}
	}
	for p := range now.files {
		if _, ok := st.files[p]; !ok {
			out = append(out, "new file "+p)
		}
	}
	return strings.Join(out, "; ")
}

// waitRefused waits for the pod's event that names rule and knob (or says
// no config item can allow it), checks `kubectl describe pod` shows it, and
// that the pod is not running.
func waitRefused(t *testing.T, ctx context.Context, cs kubernetes.Interface, name, rule, knob string) {
	t.Helper()
	want := fmt.Sprintf("evelet guardrail %q", rule)
	how := "no config item can allow this"
	if knob != "" {
		how = knob
	}
	waitFor(t, 2*time.Minute, name+" refused in pod events", func() (bool, error) {
		ev, err := cs.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
		if err != nil {
			return false, err
		}
		var msgs []string
		for _, e := range ev.Items {
			if strings.Contains(e.Message, want) && strings.Contains(e.Message, how) {
				t.Logf("%s: %s", name, e.Message)
				return true, nil
			}
			msgs = append(msgs, e.Message)
		}
		return false, fmt.Errorf("no event with %s and %s: %q", want, how, msgs)
	})
	out, err := env.cp.Kubectl(ctx, "describe", "pod", "-n", "default", name)
	if err != nil || !strings.Contains(out, want) || !strings.Contains(out, how) {
		t.Errorf("kubectl describe pod %s lacks %s and %s: %v\n%s", name, want, how, err, tail(out, 15))
	}
	p, err := cs.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range p.Status.ContainerStatuses {
		if s.State.Running != nil || s.State.Terminated != nil {
			t.Errorf("%s: container %s ran despite the guardrail: %+v", name, s.Name, s.State)
		}
	}
}

// deletePod deletes a pod and waits until it is gone: a refused pod must not
// leave anything the kubelet cannot clean up (it would stay Terminating).
func deletePod(t *testing.T, ctx context.Context, cs kubernetes.Interface, name string) {
	t.Helper()
	cs.CoreV1().Pods("default").Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	waitFor(t, 2*time.Minute, name+" deleted", func() (bool, error) {
		_, err := cs.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), err
	})
}

// TestEscapes: the escapes a cluster-admin found on a default-policy device
// (issue 11), each tried with the pod spec the attacker sent, each refused
// with its rule in the pod's events, and the device unchanged afterwards:
// the mount table is back to what it was, the node's credentials and the
// files the attack aimed at have the same bytes and modes.
func TestEscapes(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 25*time.Minute)
	cs := env.cp.Client()
	node := "edge-escapes"
	d, sim := newSimDevice(t, node)
	deleteNodeAtEnd(t, node)
	if err := sim.SetCluster(simCluster(t, env.cp, "prod", "22222222-3333-4444-8555-666666666666")); err != nil {
		t.Fatal(err)
	}
	d.start()
	waitNodeReady(t, node, 3*time.Minute)
	podsDir := filepath.Join(d.stateDir(), "kubelet", "root", "pods")

	// A root-only host file in the role of the device's keys.
	canary := filepath.Join(d.dir, "device-key.pem")
	secret := make([]byte, 16)
	rand.Read(secret)
	if err := os.WriteFile(canary, []byte(hex.EncodeToString(secret)), 0o600); err != nil {
		t.Fatal(err)
	}

	// The victim: another tenant's pod with a Memory emptyDir and its
	// service account token (both tmpfs).
	newVictim := func(t *testing.T, name string) (memDir, tokenRel string) {
		v := guardedPod(name, node, func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "mem", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: ptr.To(resource.MustParse("16Mi"))}}}}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "mem", MountPath: "/mem"}}
			p.Spec.Containers[0].Command = []string{"sh", "-c", "echo victim-secret > /mem/secret && sleep 3600"}
		})
		if _, err := cs.CoreV1().Pods("default").Create(ctx, v, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { deletePod(t, context.Background(), cs, name) })
		var uid string
		waitFor(t, 3*time.Minute, name+" Running", func() (bool, error) {
			p, err := cs.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			uid = string(p.UID)
			return p.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s", p.Status.Phase)
		})
		memDir = filepath.Join(podsDir, uid, "volumes", "kubernetes.io~empty-dir", "mem")
		waitFor(t, time.Minute, name+"'s secret written", func() (bool, error) {
			b, err := os.ReadFile(filepath.Join(memDir, "secret"))
			return string(b) == "victim-secret\n", err
		})
		ms, _ := filepath.Glob(filepath.Join(podsDir, uid, "volumes", "kubernetes.io~projected", "kube-api-access-*"))
		if len(ms) != 1 {
			t.Fatalf("%s has no service account token volume: %v", name, ms)
		}
		return memDir, relTo(podsDir, ms[0])
	}
	victimMem, victimToken := newVictim(t, "victim")
	// The kubelet's move onto the local API cache writes its kubeconfig
	// to the cache into the credentials: done before the snapshot.
	d.waitKubeletSettled(2 * time.Minute)
	watched := func() []string {
		return []string{d.credDir(), canary, victimMem, filepath.Join(podsDir, victimToken)}
	}
	before := snapshotDevice(t, d.dir, watched()...)

	podDirVolume := func(p *corev1.Pod, mounts ...corev1.VolumeMount) {
		p.Spec.Volumes = []corev1.Volume{{Name: "pods", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
			Path: podsDir, Type: ptr.To(corev1.HostPathDirectory)}}}}
		p.Spec.Containers[0].VolumeMounts = mounts
	}
	attempt := func(t *testing.T, name, rule, knob string, mut func(*corev1.Pod)) {
		if _, err := cs.CoreV1().Pods("default").Create(ctx, guardedPod(name, node, mut), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitRefused(t, ctx, cs, name, rule, knob)
		deletePod(t, ctx, cs, name)
		waitFor(t, time.Minute, "the device unchanged after "+name, func() (bool, error) {
			if d := before.diff(snapshotDevice(t, d.dir, watched()...)); d != "" {
				return false, fmt.Errorf("%s", d)
			}
			return true, nil
		})
	}

	// Item 1: the pod's own kubelet directory through a hostPath on the
	// kubelet's pods/ and subPathExpr $(UID); the container would swap its
	// etc-hosts and termination-log for links to a host key.
	t.Run("own pod directory", func(t *testing.T) {
		attempt(t, "x-poddir", policy.RuleHostPath, "", func(p *corev1.Pod) {
			podDirVolume(p, corev1.VolumeMount{Name: "pods", MountPath: "/pod", SubPathExpr: "$(UID)"})
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "UID", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.uid"}}}}
			p.Spec.Containers[0].Command = []string{"sh", "-c", "rm -f /pod/etc-hosts && ln -s " + canary + " /pod/etc-hosts; " +
				"for f in /pod/containers/main/*; do rm -f $f; ln -s " + canary + " $f; done; sleep 3600"}
		})
	})

	// Item 2: another pod's tmpfs volumes (its token and its Memory
	// emptyDir) through subPaths of the same hostPath.
	t.Run("other pod's tmpfs", func(t *testing.T) {
		attempt(t, "x-crosspod", policy.RuleHostPath, "", func(p *corev1.Pod) {
			podDirVolume(p,
				corev1.VolumeMount{Name: "pods", MountPath: "/stolen-mem", SubPath: relTo(podsDir, victimMem)},
				corev1.VolumeMount{Name: "pods", MountPath: "/stolen-token", SubPath: victimToken})
			p.Spec.Containers[0].Command = []string{"sh", "-c", "cat /stolen-token/token; echo pwned > /stolen-mem/secret; sleep 3600"}
		})
	})

	// The same against a victim that goes away first: the kubelet must
	// still clean up the attacker's pod (issue 11 saw one stay Terminating).
	t.Run("other pod's tmpfs, victim deleted first", func(t *testing.T) {
		mem2, token2 := newVictim(t, "victim2")
		base := snapshotDevice(t, d.dir, watched()...)
		if _, err := cs.CoreV1().Pods("default").Create(ctx, guardedPod("x-crosspod2", node, func(p *corev1.Pod) {
			podDirVolume(p,
				corev1.VolumeMount{Name: "pods", MountPath: "/stolen-token", SubPath: token2},
				corev1.VolumeMount{Name: "pods", MountPath: "/stolen-mem", SubPath: relTo(podsDir, mem2)})
		}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitRefused(t, ctx, cs, "x-crosspod2", policy.RuleHostPath, "")
		deletePod(t, ctx, cs, "victim2")
		deletePod(t, ctx, cs, "x-crosspod2")
		waitFor(t, time.Minute, "the device unchanged", func() (bool, error) {
			now := snapshotDevice(t, d.dir, watched()...)
			var extra []string
			for _, m := range now.mounts {
				if !slices.Contains(base.mounts, m) {
					extra = append(extra, m)
				}
			}
			if len(extra) > 0 {
				return false, fmt.Errorf("mounts left: %q", extra)
			}
			if d := before.diff(now); strings.Contains(d, "changed") || strings.Contains(d, "new file") {
				return false, fmt.Errorf("%s", d)
			}
			return true, nil
		})
	})

	// Item 5: no seccomp filter (unprivileged user namespaces).
	t.Run("seccomp unconfined", func(t *testing.T) {
		attempt(t, "x-seccomp", policy.RuleSeccomp, policy.KeyAllowUnconfinedSeccomp, func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined}}
			p.Spec.Containers[0].Command = []string{"sh", "-c", "unshare -U -r id; sleep 3600"}
		})
	})

	// Item 3: hostPort on the kubelet's port: refused, with no knob, by
	// default and once the owner allows host ports (one answer, issue 15);
	// a free allowed port runs.
	t.Run("hostPort on the kubelet's port", func(t *testing.T) {
		hostPort := func(port int32) func(*corev1.Pod) {
			return func(p *corev1.Pod) {
				p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 8080, HostPort: port}}
			}
		}
		attempt(t, "x-hostport", policy.RuleHostPorts, "", hostPort(10250))
		if err := sim.SetConfigItems(map[string]string{"evelet.apiserver-url": env.cp.URL(), policy.KeyAllowedHostPorts: "10000-10300"}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "agent applied the owner's config items", func() (bool, error) {
			return strings.Contains(d.log(), "allowed-host-ports"), nil
		})
		attempt(t, "x-hostport-allowed", policy.RuleHostPorts, "", hostPort(10250))
		attempt(t, "x-healthz-allowed", policy.RuleHostPorts, "", hostPort(10248))

		// The kubelet still answers on its ports, and no DNAT took them.
		resp, err := http.Get("http://127.0.0.1:10248/healthz")
		if err != nil {
			t.Fatalf("kubelet healthz: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "ok" {
			t.Errorf("healthz on 10248 answered %q", b)
		}
		if out, err := exec.Command("iptables-save", "-t", "nat").CombinedOutput(); err == nil &&
			(bytes.Contains(out, []byte("--dport 10250")) || bytes.Contains(out, []byte("--dport 10248"))) {
			t.Errorf("a DNAT rule for the kubelet's ports:\n%s", out)
		}

		// The knob works for a port the device does not use.
		ok := guardedPod("x-hostport-free", node, hostPort(10299))
		if _, err := cs.CoreV1().Pods("default").Create(ctx, ok, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		defer deletePod(t, ctx, cs, "x-hostport-free")
		waitFor(t, 2*time.Minute, "hostPort 10299 Running", func() (bool, error) {
			p, err := cs.CoreV1().Pods("default").Get(ctx, "x-hostport-free", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return p.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s", p.Status.Phase)
		})
	})

	// The victim's files were never touched (also covered by the snapshot).
	if b, err := os.ReadFile(filepath.Join(victimMem, "secret")); err != nil || string(b) != "victim-secret\n" {
		t.Errorf("victim's secret: %q %v", b, err)
	}
}

func relTo(base, p string) string {
	r, err := filepath.Rel(base, p)
	if err != nil {
		panic(err)
	}
	return r
}
