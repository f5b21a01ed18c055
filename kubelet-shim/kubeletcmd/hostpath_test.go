package kubeletcmd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/kubernetes/cmd/kubelet/app"
	"k8s.io/kubernetes/pkg/volume"

	kubeletshim "github.com/lf-edge/evelet/kubelet-shim"
	"github.com/lf-edge/evelet/policy"
)

var testPod = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "attacker"}}

func guardWith(t *testing.T, allowed ...string) *VolumeGuard {
	t.Helper()
	f := filepath.Join(t.TempDir(), "policy.json")
	p := policy.Default()
	p.AllowedHostPaths = allowed
	if err := kubeletshim.WritePolicyFile(f, p); err != nil {
		t.Fatal(err)
	}
	return &VolumeGuard{PolicyFile: f}
}

func wantHostPathViolation(t *testing.T, err error, path string) {
	t.Helper()
	var v *policy.Violation
	if !errors.As(err, &v) || v.Rule != policy.RuleHostPath {
		t.Fatalf("got %v, want a %s violation", err, policy.RuleHostPath)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("message %q does not name %q", err, path)
	}
}

func TestVolumeGuardRefusesOutsideAndCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	allowed := filepath.Join(dir, "data")
	os.Mkdir(allowed, 0o755)
	g := guardWith(t, allowed)
	target := filepath.Join(dir, "config", "planted")
	err := g.Admit(testPod, "h", target, corev1.HostPathDirectoryOrCreate)
	wantHostPathViolation(t, err, target)
	if !strings.Contains(err.Error(), policy.KeyAllowedHostPaths) {
		t.Errorf("message %q lacks the knob", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "config")); !os.IsNotExist(err) {
		t.Fatalf("refused path was created: %v", err)
	}
	// A prefix is matched by whole elements.
	wantHostPathViolation(t, g.Admit(testPod, "h", allowed+"base", corev1.HostPathUnset), allowed+"base")
	// Relative and ".." paths never pass.
	wantHostPathViolation(t, g.Admit(testPod, "h", allowed+"/../config", corev1.HostPathDirectoryOrCreate), "..")
}

func TestVolumeGuardCreatesInsideWithoutFollowingLinks(t *testing.T) {
	dir := t.TempDir()
	allowed := filepath.Join(dir, "data")
	outside := filepath.Join(dir, "outside")
	os.Mkdir(allowed, 0o755)
	os.Mkdir(outside, 0o755)
	g := guardWith(t, allowed)

	d := filepath.Join(allowed, "a", "b")
	if err := g.Admit(testPod, "h", d, corev1.HostPathDirectoryOrCreate); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(d); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o755 {
		t.Fatalf("directory not created 0755: %v %v", fi, err)
	}
	f := filepath.Join(allowed, "a", "file")
	if err := g.Admit(testPod, "h", f, corev1.HostPathFileOrCreate); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(f); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("file not created: %v %v", fi, err)
	}

	// The owner's entry itself may not exist yet: it is created too.
	fresh := filepath.Join(dir, "fresh")
	g2 := guardWith(t, fresh)
	if err := g2.Admit(testPod, "h", fresh, corev1.HostPathDirectoryOrCreate); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(fresh); err != nil || !fi.IsDir() {
		t.Fatalf("allowed entry not created: %v", err)
	}

	// A link planted inside the allowed path (a pod that mounts it can do
	// that) to outside: the path resolves outside and is refused.
	if err := os.Symlink(outside, filepath.Join(allowed, "link")); err != nil {
		t.Fatal(err)
	}
	wantHostPathViolation(t, g.Admit(testPod, "h", filepath.Join(allowed, "link", "x"), corev1.HostPathDirectoryOrCreate), "link")
	// The same swap after the check: creation does not follow it.
	if err := createBeneath(allowed, "link/y", true); err == nil {
		t.Fatal("createBeneath followed a symbolic link")
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("something was created outside: %v", ents)
	}
}

func TestVolumeGuardFollowsPolicyFile(t *testing.T) {
	dir := t.TempDir()
	allowed := filepath.Join(dir, "data")
	os.Mkdir(allowed, 0o755)
	g := guardWith(t)
	p := filepath.Join(allowed, "x")
	wantHostPathViolation(t, g.Admit(testPod, "h", p, corev1.HostPathDirectoryOrCreate), p)
	pol := policy.Default()
	pol.AllowedHostPaths = []string{allowed}
	if err := kubeletshim.WritePolicyFile(g.PolicyFile, pol); err != nil {
		t.Fatal(err)
	}
	if err := g.Admit(testPod, "h", p, corev1.HostPathDirectoryOrCreate); err != nil {
		t.Fatalf("after the owner allowed %s: %v", allowed, err)
	}
	// No file: nothing is allowed.
	os.Remove(g.PolicyFile)
	wantHostPathViolation(t, g.Admit(testPod, "h", p, corev1.HostPathDirectory), p)
	// A broken file: nothing is allowed either.
	os.WriteFile(g.PolicyFile, []byte("{"), 0o600)
	wantHostPathViolation(t, g.Admit(testPod, "h", p, corev1.HostPathDirectory), p)
}

// Wrap finds the hostPath plugin among the kubelet's real plugins.
func TestWrapReplacesTheKubeletsHostPathPlugin(t *testing.T) {
	plugins, err := app.ProbeVolumePlugins(context.Background(), utilfeature.DefaultFeatureGate)
	if err != nil {
		t.Fatal(err)
	}
	g := &VolumeGuard{}
	out, err := g.Wrap(plugins)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range out {
		if _, ok := p.(*guardedHostPath); ok {
			n++
		}
	}
	if n != 1 || len(out) != len(plugins) {
		t.Fatalf("%d guarded plugins of %d", n, len(out))
	}
	if _, err := g.Wrap([]volume.VolumePlugin{}); err == nil {
		t.Fatal("no hostPath plugin must be an error")
	}
}

func TestWithHostPathTypeCopies(t *testing.T) {
	orig := corev1.HostPathDirectoryOrCreate
	spec := volume.NewSpecFromVolume(&corev1.Volume{Name: "h", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/x", Type: &orig}}})
	c := withHostPathType(spec, corev1.HostPathDirectory)
	if *c.Volume.HostPath.Type != corev1.HostPathDirectory || *spec.Volume.HostPath.Type != corev1.HostPathDirectoryOrCreate {
		t.Fatalf("copy %v, original %v", *c.Volume.HostPath.Type, *spec.Volume.HostPath.Type)
	}
}

func TestTakeFlag(t *testing.T) {
	v, rest := takeFlag([]string{"--evelet-policy-file=/run/p.json", "--config=/c"}, kubeletshim.PolicyFileFlag)
	if v != "/run/p.json" || len(rest) != 1 || rest[0] != "--config=/c" {
		t.Fatalf("%q %q", v, rest)
	}
}

// A hostPath into the kubelet's directory is refused even when the owner
// allowed a parent of it.
func TestVolumeGuardRefusesKubeletDir(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "kubelet", "root")
	os.MkdirAll(filepath.Join(root, "pods"), 0o755)
	f := filepath.Join(t.TempDir(), "policy.json")
	p := policy.Default()
	p.KubeletRootDir, p.AllowedHostPaths = root, []string{dir}
	if err := kubeletshim.WritePolicyFile(f, p); err != nil {
		t.Fatal(err)
	}
	g := &VolumeGuard{PolicyFile: f}
	err := g.Admit(testPod, "h", filepath.Join(root, "pods"), corev1.HostPathDirectory)
	wantHostPathViolation(t, err, "kubelet")
	if strings.Contains(err.Error(), policy.KeyAllowedHostPaths) {
		t.Errorf("no knob may allow the kubelet's directory: %v", err)
	}
	if err := g.Admit(testPod, "h", filepath.Join(dir, "data"), corev1.HostPathDirectoryOrCreate); err != nil {
		t.Errorf("a sibling of the kubelet's directory: %v", err)
	}
}
