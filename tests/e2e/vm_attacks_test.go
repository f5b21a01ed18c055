package e2e

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/cri/vm"
	"github.com/lf-edge/evelet/images/vmguest"
	"github.com/lf-edge/evelet/policy"
)

// TestVMPodSpecRefusals: what a VM pod asks for that a guest cannot be
// given is refused by a named rule that reaches kubectl describe, before
// any VM is made (issue 21 item 14): init containers (the init container
// used to boot as the VM and the pod hung in PodInitializing), volumes
// (silently missing in the guest), env, and a RuntimeClass without QEMU's
// overhead (QEMU was OOM-killed: "QEMU killed by killed"). No QEMU runs
// here: every pod is refused at RunPodSandbox.
func TestVMPodSpecRefusals(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 10*time.Minute)
	cs := env.cp.Client()
	node := "edge-vm-refuse"
	d, sim := newSimDevice(t, node)
	d.source = append(d.source, "--vm-cni-conf-dir="+env.ctrd.CNIConfDir(), "--vm-cni-bin-dir=/usr/lib/cni", "--vm-kvm-device=/nonexistent/kvm")
	deleteNodeAtEnd(t, node)
	cl := simCluster(t, env.cp, "prod", "33333333-4444-4555-8666-777777777778")
	cl.ConfigItems[policy.KeyAllowVMEmulation] = "true"
	if err := sim.SetCluster(cl); err != nil {
		t.Fatal(err)
	}
	d.start()
	n := waitNodeReady(t, node, 3*time.Minute)
	if n.Labels[agent.LabelVMRuntime] != vm.Handler {
		t.Fatalf("node labels %v lack %s=%s", n.Labels, agent.LabelVMRuntime, vm.Handler)
	}
	applyRuntimeClass(t, ctx)
	// A RuntimeClass for the same handler without the overhead.
	bare := &nodev1.RuntimeClass{ObjectMeta: metav1.ObjectMeta{Name: "eve-vm-no-overhead"}, Handler: vm.Handler,
		Scheduling: &nodev1.Scheduling{NodeSelector: map[string]string{agent.LabelVMRuntime: vm.Handler}}}
	if _, err := cs.NodeV1().RuntimeClasses().Create(ctx, bare, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.NodeV1().RuntimeClasses().Delete(context.Background(), bare.Name, metav1.DeleteOptions{}) })

	onNode := func(p *corev1.Pod) { p.Spec.NodeName = node }
	cases := []struct {
		pod  *corev1.Pod
		want string
	}{
		{vmPod("vm-init", vmguest.DiskRef, func(p *corev1.Pod) {
			onNode(p)
			p.Spec.InitContainers = []corev1.Container{{Name: "setup", Image: vmguest.DiskRef, ImagePullPolicy: corev1.PullNever}}
		}), `evelet guardrail "` + vm.RuleVMInitContainers + `"`},
		{vmPod("vm-volume", vmguest.DiskRef, func(p *corev1.Pod) {
			onNode(p)
			p.Spec.Volumes = []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "scratch", MountPath: "/scratch"}}
		}), `evelet guardrail "` + vm.RuleVMVolumes + `"`},
		{vmPod("vm-env", vmguest.DiskRef, func(p *corev1.Pod) {
			onNode(p)
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "MODE", Value: "x"}}
		}), `evelet guardrail "` + vm.RuleVMEntrypoint + `"`},
		{vmPod("vm-no-overhead", vmguest.DiskRef, func(p *corev1.Pod) {
			onNode(p)
			p.Spec.RuntimeClassName = ptr.To(bare.Name)
			p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")}
		}), `evelet guardrail "` + vm.RuleVMOverhead + `"`},
	}
	for _, c := range cases {
		if _, err := cs.CoreV1().Pods("default").Create(ctx, c.pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { deletePod(t, context.Background(), cs, c.pod.Name) })
	}
	for _, c := range cases {
		waitPodEvent(t, ctx, cs, c.pod.Name, c.want)
		p, err := cs.CoreV1().Pods("default").Get(ctx, c.pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			if st.State.Running != nil || st.ContainerID != "" {
				t.Errorf("%s: container %s was made (%+v)", c.pod.Name, st.Name, st.State)
			}
		}
	}
	// No VM was made for any of them.
	names, _ := readDirNames(d.stateDir() + "/vm")
	for _, n := range names {
		if n != "images" && n != "sandboxes" {
			t.Errorf("VM state %s left by a refused pod", n)
		}
	}
}
