package kubeletcmd

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/kubernetes/cmd/kubelet/app"
	"k8s.io/kubernetes/pkg/volume"
	"k8s.io/utils/ptr"

	kubeletshim "github.com/lf-edge/evelet/kubelet-shim"
	"github.com/lf-edge/evelet/policy"
)

// Every plugin the v1.35 kubelet registers is one evelet knows and judges,
// and the wrapped plugins keep the interfaces the kubelet looks for.
func TestWrapJudgesEveryKubeletPlugin(t *testing.T) {
	plugins, err := app.ProbeVolumePlugins(context.Background(), utilfeature.DefaultFeatureGate)
	if err != nil {
		t.Fatal(err)
	}
	out, err := (&VolumeGuard{}).Wrap(plugins)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i, p := range plugins {
		name := p.GetPluginName()
		seen[name] = true
		if policy.ClassifyVolumePlugin(name) == policy.PluginUnknown {
			t.Errorf("the kubelet registers %s, which the policy does not know", name)
		}
		w := out[i]
		if w.GetPluginName() != name {
			t.Fatalf("plugin %d: %s became %s", i, name, w.GetPluginName())
		}
		if policy.ClassifyVolumePlugin(name) == policy.PluginHostless && name != emptyDirPluginName && w != p {
			t.Errorf("%s is wrapped; it needs no judgement", name)
		}
		if policy.ClassifyVolumePlugin(name) != policy.PluginHostless && w == p {
			t.Errorf("%s is not wrapped", name)
		}
		for _, iface := range []struct {
			what string
			has  func(volume.VolumePlugin) bool
		}{
			{"persistent", func(p volume.VolumePlugin) bool { _, ok := p.(volume.PersistentVolumePlugin); return ok }},
			{"block", func(p volume.VolumePlugin) bool { _, ok := p.(volume.BlockVolumePlugin); return ok }},
			{"attachable", func(p volume.VolumePlugin) bool { _, ok := p.(volume.AttachableVolumePlugin); return ok }},
			{"device-mountable", func(p volume.VolumePlugin) bool { _, ok := p.(volume.DeviceMountableVolumePlugin); return ok }},
		} {
			if iface.has(p) && !iface.has(w) {
				t.Errorf("wrapped %s lost the %s interface", name, iface.what)
			}
		}
	}
	for _, want := range []string{"kubernetes.io/nfs", "kubernetes.io/iscsi", "kubernetes.io/fc", "kubernetes.io/local-volume", "kubernetes.io/image", "kubernetes.io/git-repo"} {
		if !seen[want] {
			t.Errorf("the kubelet no longer registers %s: review the policy's plugin table", want)
		}
	}
}

// fakePlugin records whether the kubelet's plugin was asked for a mounter.
type fakePlugin struct {
	volume.VolumePlugin
	name   string
	called bool
}

func (f *fakePlugin) GetPluginName() string { return f.name }
func (f *fakePlugin) GetAccessModes() []corev1.PersistentVolumeAccessMode {
	return []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
}
func (f *fakePlugin) NewMounter(*volume.Spec, *corev1.Pod) (volume.Mounter, error) {
	f.called = true
	return nil, nil
}

func guardWithPolicy(t *testing.T, p policy.Policy) *VolumeGuard {
	t.Helper()
	f := filepath.Join(t.TempDir(), "policy.json")
	if err := kubeletshim.WritePolicyFile(f, p); err != nil {
		t.Fatal(err)
	}
	return &VolumeGuard{PolicyFile: f}
}

func wrapOne(t *testing.T, g *VolumeGuard, f *fakePlugin) volume.VolumePlugin {
	t.Helper()
	out, err := g.Wrap([]volume.VolumePlugin{&fakePlugin{name: hostPathPluginName}, f})
	if err != nil {
		t.Fatal(err)
	}
	return out[1]
}

func wantRule(t *testing.T, err error, rule, piece string) {
	t.Helper()
	var v *policy.Violation
	if !errors.As(err, &v) || v.Rule != rule || !strings.Contains(err.Error(), piece) {
		t.Errorf("got %v, want rule %s with %q", err, rule, piece)
	}
}

func TestVolumeGuardHostMountingPlugins(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "x"}}
	nfsSpec := volume.NewSpecFromVolume(&corev1.Volume{Name: "n", VolumeSource: corev1.VolumeSource{NFS: &corev1.NFSVolumeSource{Server: "127.0.0.1", Path: "/tmp"}}})

	nfs := &fakePlugin{name: "kubernetes.io/nfs"}
	_, err := wrapOne(t, guardWithPolicy(t, policy.Default()), nfs).NewMounter(nfsSpec, pod)
	wantRule(t, err, policy.RuleVolumePlugins, `adding "nfs" to config item evelet.policy.allowed-volume-plugins`)
	if nfs.called {
		t.Error("the nfs plugin was asked for a mounter despite the refusal")
	}

	allowed := policy.Default()
	allowed.AllowedVolumePlugins = []string{"nfs"}
	nfs = &fakePlugin{name: "kubernetes.io/nfs"}
	if _, err := wrapOne(t, guardWithPolicy(t, allowed), nfs).NewMounter(nfsSpec, pod); err != nil || !nfs.called {
		t.Errorf("allowed nfs: %v, called %v", err, nfs.called)
	}

	for _, name := range []string{"kubernetes.io/image", "flexvolume-acme/x"} {
		f := &fakePlugin{name: name}
		_, err := wrapOne(t, guardWithPolicy(t, allowed), f).NewMounter(nfsSpec, pod)
		if err == nil || f.called || !strings.Contains(err.Error(), "no config item can allow this") {
			t.Errorf("%s: %v, called %v", name, err, f.called)
		}
	}
}

func TestVolumeGuardLocalPV(t *testing.T) {
	dir, _ := filepath.EvalSymlinks(t.TempDir())
	p := policy.Default()
	p.KubeletRootDir = filepath.Join(dir, "kubelet", "root")
	p.PodLogsDir = filepath.Join(dir, "logs", "pods")
	p.AllowedHostPaths = []string{dir}
	g := guardWithPolicy(t, p)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "x"}}
	local := func(path string) *volume.Spec {
		return volume.NewSpecFromPersistentVolume(&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv"},
			Spec: corev1.PersistentVolumeSpec{PersistentVolumeSource: corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: path}}}}, false)
	}
	for path, want := range map[string]string{
		p.PodLogsDir:                            "inside the kubelet's pod-logs directory",
		filepath.Join(p.KubeletRootDir, "pods"): "inside the kubelet's root directory",
		filepath.Join(dir, "logs"):              "a parent of the kubelet's pod-logs directory",
	} {
		f := &fakePlugin{name: "kubernetes.io/local-volume"}
		_, err := wrapOne(t, g, f).NewMounter(local(path), pod)
		wantRule(t, err, policy.RuleHostPath, want)
		if err != nil && !strings.Contains(err.Error(), "no config item can allow this") || f.called {
			t.Errorf("%s: %v, called %v", path, err, f.called)
		}
	}
	f := &fakePlugin{name: "kubernetes.io/local-volume"}
	if _, err := wrapOne(t, g, f).NewMounter(local(filepath.Join(dir, "data")), pod); err != nil || !f.called {
		t.Errorf("local PV under an allowed path: %v, called %v", err, f.called)
	}
	f = &fakePlugin{name: "kubernetes.io/local-volume"}
	_, err := wrapOne(t, guardWithPolicy(t, policy.Default()), f).NewMounter(local("/srv/data"), pod)
	wantRule(t, err, policy.RuleHostPath, `adding "/srv/data" to config item evelet.policy.allowed-host-paths`)
}

func TestVolumeGuardMemoryEmptyDir(t *testing.T) {
	g := guardWithPolicy(t, policy.Default())
	f := &fakePlugin{name: emptyDirPluginName}
	vol := corev1.Volume{Name: "m", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
		Medium: corev1.StorageMediumMemory, SizeLimit: ptr.To(resource.MustParse("1Pi"))}}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "x"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "main"}}, Volumes: []corev1.Volume{vol}}}
	_, err := wrapOne(t, g, f).NewMounter(volume.NewSpecFromVolume(&vol), pod)
	wantRule(t, err, policy.RuleUnboundedMemoryVolume, "sizeLimit 1Pi")
	if f.called {
		t.Error("the emptyDir plugin was asked for a mounter")
	}
	// The tmpfs the kubelet's secret/projected plugins make through the
	// emptyDir plugin (no sizeLimit, not in the pod's spec) is the
	// kubelet's own: admitted (e2e: every pod's service account token).
	wrapped := &corev1.Volume{Name: "wrapped_kube-api-access-x", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}}
	if _, err := wrapOne(t, g, f).NewMounter(volume.NewSpecFromVolume(wrapped), pod); err != nil || !f.called {
		t.Errorf("wrapped emptyDir: %v, called %v", err, f.called)
	}
	f.called = false
	pod.Spec.Volumes[0].EmptyDir.SizeLimit = ptr.To(resource.MustParse("16Mi"))
	if _, err := wrapOne(t, g, f).NewMounter(volume.NewSpecFromVolume(&pod.Spec.Volumes[0]), pod); err != nil || !f.called {
		t.Errorf("16Mi: %v, called %v", err, f.called)
	}
}
