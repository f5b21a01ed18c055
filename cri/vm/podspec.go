package vm

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/lf-edge/evelet/policy"
)

// Rules of VM pods: what a pod asks for that a guest cannot be given is
// refused by name, never dropped (docs/vm-pods.md, "What a VM pod may ask
// for"). No config item allows any of them.
const (
	RuleVMHostNamespaces = "vm-no-host-namespaces"
	RuleVMInitContainers = "vm-no-init-containers"
	RuleVMOneContainer   = "vm-one-container"
	RuleVMVolumes        = "vm-no-volumes"
	RuleVMEntrypoint     = "vm-no-entrypoint-or-env"
	RuleVMOverhead       = "vm-runtimeclass-overhead"
)

// serviceAccountVolumePrefix names the projected volume the
// ServiceAccount admission plugin adds to every pod that does not opt
// out (kube-api-access-<random>): the one volume a VM pod may carry. It
// does not reach the guest (documented), which is not what the pod's
// author asked for but what the cluster added.
const serviceAccountVolumePrefix = "kube-api-access-"

// CheckPod checks a VM pod as the apiserver has it (the CRI request does
// not carry init containers, volumes by name or env as written). The CRI
// shim calls it before RunPodSandbox (cri.PodChecker); an error is a
// *policy.Violation, which reaches kubectl describe as PermissionDenied.
func (b *Backend) CheckPod(pod *corev1.Pod) error {
	return checkVMPod(pod)
}

func checkVMPod(pod *corev1.Pod) error {
	subj := "VM pod " + pod.Namespace + "/" + pod.Name
	refuse := func(rule, detail string) error {
		return &policy.Violation{Rule: rule, Subject: subj, Detail: detail}
	}
	s := &pod.Spec
	var host []string
	for _, h := range []struct {
		on   bool
		name string
	}{{s.HostNetwork, "hostNetwork"}, {s.HostPID, "hostPID"}, {s.HostIPC, "hostIPC"}} {
		if h.on {
			host = append(host, h.name)
		}
	}
	if len(host) > 0 {
		return refuse(RuleVMHostNamespaces, "asks for "+strings.Join(host, ", ")+": the guest runs its own kernel and cannot share the device's namespaces")
	}
	if len(s.InitContainers) > 0 {
		return refuse(RuleVMInitContainers, fmt.Sprintf("has init containers (%s): a VM pod runs exactly one container, the VM; put the init steps in the guest's boot", containerNames(s.InitContainers)))
	}
	if len(s.Containers) != 1 {
		return refuse(RuleVMOneContainer, fmt.Sprintf("has %d containers (%s): a VM pod runs exactly one, the VM", len(s.Containers), containerNames(s.Containers)))
	}
	var vols []string
	for _, v := range s.Volumes {
		if strings.HasPrefix(v.Name, serviceAccountVolumePrefix) && v.Projected != nil {
			continue
		}
		vols = append(vols, v.Name)
	}
	if len(vols) > 0 {
		return refuse(RuleVMVolumes, fmt.Sprintf("has volumes (%s): nothing of the device's file system reaches a guest, its only disk is its image's", strings.Join(vols, ", ")))
	}
	c := &s.Containers[0]
	var fields []string
	if len(c.Command) > 0 {
		fields = append(fields, "command")
	}
	if len(c.Args) > 0 {
		fields = append(fields, "args")
	}
	if len(c.Env) > 0 {
		fields = append(fields, "env")
	}
	if len(c.EnvFrom) > 0 {
		fields = append(fields, "envFrom")
	}
	if c.WorkingDir != "" {
		fields = append(fields, "workingDir")
	}
	if len(c.VolumeDevices) > 0 {
		fields = append(fields, "volumeDevices")
	}
	if len(fields) > 0 {
		return refuse(RuleVMEntrypoint, fmt.Sprintf("container %q sets %s: a VM boots its disk image, it has no entrypoint, environment or working directory to give them to", c.Name, strings.Join(fields, ", ")))
	}
	return nil
}

func containerNames(cs []corev1.Container) string {
	n := make([]string, len(cs))
	for i := range cs {
		n[i] = cs[i].Name
	}
	return strings.Join(n, ", ")
}
