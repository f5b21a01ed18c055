package kubeletcmd

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/kubernetes/pkg/volume"

	"github.com/lf-edge/evelet/policy"
)

const emptyDirPluginName = "kubernetes.io/empty-dir"

// Wrap puts the guard in front of every volume plugin of the kubelet, so
// that every volume is judged when the kubelet builds its mounter or block
// mapper: the first step of a volume's setup, before the kubelet creates,
// attaches or mounts anything (k8s.io/kubernetes pkg/volume/util/
// operationexecutor GenerateMountVolumeFunc, GenerateMapVolumeFunc). A
// refusal is a volume setup error, which the kubelet reports as a
// FailedMount event naming the evelet rule.
//
//   - hostPath: judged by its path, created safely (VolumeGuard.Admit);
//   - local PersistentVolumes: judged by their path the same way;
//   - emptyDir: Memory ones bounded (policy RuleUnboundedMemoryVolume);
//   - configMap, secret, downwardAPI, projected, CSI: unchanged;
//   - plugins that mount or run programs on the host (nfs, iscsi, fc,
//     git-repo, portworx), image volumes, and any plugin evelet does not
//     know: refused unless the owner allows them by name
//     (policy.CheckVolumePlugin).
//
// A wrapped plugin keeps the optional interfaces the kubelet looks for
// (persistent, block, attachable, device-mountable), so an owner-allowed
// plugin still works.
func (g *VolumeGuard) Wrap(plugins []volume.VolumePlugin) ([]volume.VolumePlugin, error) {
	out := make([]volume.VolumePlugin, len(plugins))
	found := false
	for i, p := range plugins {
		name := p.GetPluginName()
		switch {
		case name == hostPathPluginName:
			out[i] = &guardedHostPath{VolumePlugin: p, guard: g}
			found = true
		case name == emptyDirPluginName:
			out[i] = judged(p, g.judgeEmptyDir)
		case policy.ClassifyVolumePlugin(name) == policy.PluginHostless:
			out[i] = p
		case policy.ClassifyVolumePlugin(name) == policy.PluginHostPath:
			out[i] = judged(p, g.judgeLocal)
		default:
			out[i] = judged(p, func(spec *volume.Spec, pod *corev1.Pod) error {
				return g.policy().CheckVolumePlugin(podSubject(pod), spec.Name(), name)
			})
		}
	}
	if !found {
		return nil, fmt.Errorf("kubelet has no hostPath volume plugin to guard")
	}
	return out, nil
}

func podSubject(pod *corev1.Pod) string { return "pod " + pod.Namespace + "/" + pod.Name }

// judgeLocal judges a local PersistentVolume like a hostPath: the kubelet
// bind-mounts its path from the host.
func (g *VolumeGuard) judgeLocal(spec *volume.Spec, pod *corev1.Pod) error {
	pv := spec.PersistentVolume
	if pv == nil || pv.Spec.Local == nil {
		return fmt.Errorf("evelet: local volume %q without a local PersistentVolume source", spec.Name())
	}
	_, err := g.policy().JudgeHostPath(podSubject(pod),
		fmt.Sprintf("has local PersistentVolume %q (volume %q) on", pv.Name, spec.Name()), pv.Spec.Local.Path)
	return err
}

// judgeEmptyDir bounds a Memory emptyDir of the pod's spec before its
// tmpfs is mounted. The kubelet's secret, configMap, downwardAPI and
// projected plugins set their volumes up through the emptyDir plugin too
// (a "wrapped_<name>" Memory emptyDir the kubelet sizes itself): those are
// not in the pod's spec and are not judged here.
func (g *VolumeGuard) judgeEmptyDir(spec *volume.Spec, pod *corev1.Pod) error {
	if spec.Volume == nil {
		return nil
	}
	for i := range pod.Spec.Volumes {
		if v := &pod.Spec.Volumes[i]; v.Name == spec.Volume.Name && v.EmptyDir != nil {
			return g.policy().CheckMemoryVolume(pod, v)
		}
	}
	return nil
}

type judgeFunc func(spec *volume.Spec, pod *corev1.Pod) error

// judged wraps p, keeping the richest set of the optional interfaces the
// kubelet uses that p has.
func judged(p volume.VolumePlugin, j judgeFunc) volume.VolumePlugin {
	switch q := p.(type) {
	case attachableBlockPV:
		return &judgedAttachable{q, j}
	case deviceMountableBlockPV:
		return &judgedDeviceMountable{q, j}
	case blockPV:
		return &judgedBlockPV{q, j}
	case volume.PersistentVolumePlugin:
		return &judgedPV{q, j}
	}
	return &judgedPlugin{p, j}
}

type (
	blockPV interface {
		volume.PersistentVolumePlugin
		volume.BlockVolumePlugin
	}
	deviceMountableBlockPV interface {
		blockPV
		volume.DeviceMountableVolumePlugin
	}
	attachableBlockPV interface {
		blockPV
		volume.AttachableVolumePlugin
	}
)

func mounter(p volume.VolumePlugin, j judgeFunc, spec *volume.Spec, pod *corev1.Pod) (volume.Mounter, error) {
	if err := j(spec, pod); err != nil {
		return nil, err
	}
	return p.NewMounter(spec, pod)
}

func mapper(p volume.BlockVolumePlugin, j judgeFunc, spec *volume.Spec, pod *corev1.Pod) (volume.BlockVolumeMapper, error) {
	if err := j(spec, pod); err != nil {
		return nil, err
	}
	return p.NewBlockVolumeMapper(spec, pod)
}

type judgedPlugin struct {
	volume.VolumePlugin
	judge judgeFunc
}

func (p *judgedPlugin) NewMounter(s *volume.Spec, pod *corev1.Pod) (volume.Mounter, error) {
	return mounter(p.VolumePlugin, p.judge, s, pod)
}

type judgedPV struct {
	volume.PersistentVolumePlugin
	judge judgeFunc
}

func (p *judgedPV) NewMounter(s *volume.Spec, pod *corev1.Pod) (volume.Mounter, error) {
	return mounter(p.PersistentVolumePlugin, p.judge, s, pod)
}

type judgedBlockPV struct {
	blockPV
	judge judgeFunc
}

func (p *judgedBlockPV) NewMounter(s *volume.Spec, pod *corev1.Pod) (volume.Mounter, error) {
	return mounter(p.blockPV, p.judge, s, pod)
}

func (p *judgedBlockPV) NewBlockVolumeMapper(s *volume.Spec, pod *corev1.Pod) (volume.BlockVolumeMapper, error) {
	return mapper(p.blockPV, p.judge, s, pod)
}

type judgedDeviceMountable struct {
	deviceMountableBlockPV
	judge judgeFunc
}

func (p *judgedDeviceMountable) NewMounter(s *volume.Spec, pod *corev1.Pod) (volume.Mounter, error) {
	return mounter(p.deviceMountableBlockPV, p.judge, s, pod)
}

func (p *judgedDeviceMountable) NewBlockVolumeMapper(s *volume.Spec, pod *corev1.Pod) (volume.BlockVolumeMapper, error) {
	return mapper(p.deviceMountableBlockPV, p.judge, s, pod)
}

type judgedAttachable struct {
	attachableBlockPV
	judge judgeFunc
}

func (p *judgedAttachable) NewMounter(s *volume.Spec, pod *corev1.Pod) (volume.Mounter, error) {
	return mounter(p.attachableBlockPV, p.judge, s, pod)
}

func (p *judgedAttachable) NewBlockVolumeMapper(s *volume.Spec, pod *corev1.Pod) (volume.BlockVolumeMapper, error) {
	return mapper(p.attachableBlockPV, p.judge, s, pod)
}

// noFlexVolumes is the kubelet's dynamic plugin prober with no drivers:
// FlexVolume drivers are host programs the kubelet runs as root; evelet
// does not load them (a volume of theirs is an unknown plugin, refused).
type noFlexVolumes struct{}

func (noFlexVolumes) Init() error                         { return nil }
func (noFlexVolumes) Probe() ([]volume.ProbeEvent, error) { return nil, nil }
