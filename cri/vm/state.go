package vm

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri/vm/vmm"
)

// On-disk layout under the backend's state directory (<state-root>/vm):
//
//	sandboxes/<sandbox-id>/sandbox.json   one pod
//	<container-id>/container.json         one VM: its spec, written at create
//	<container-id>/overlay.qcow2          the container's own disk
//	<container-id>/qmp.sock, qga.sock     QEMU's monitor and guest agent
//	<container-id>/vmm.json, vmm.pid, qemu.pid, started, exit.json,
//	  console.sock, vmm.log, qemu.log     the supervisor's (cri/vm/vmm)
//	images/<manifest-digest-hex>/         /disk/* of an image, extracted once
const (
	sandboxesDir  = "sandboxes"
	imagesDir     = "images"
	sandboxFile   = "sandbox.json"
	containerFile = "container.json"
	overlayFile   = "overlay.qcow2"
	qmpSocket     = "qmp.sock"
	qgaSocket     = "qga.sock"
)

// sandboxState is what the backend remembers of a pod.
type sandboxState struct {
	ID             string                         `json:"id"`
	Metadata       *runtimeapi.PodSandboxMetadata `json:"metadata"`
	Labels         map[string]string              `json:"labels,omitempty"`
	Annotations    map[string]string              `json:"annotations,omitempty"`
	RuntimeHandler string                         `json:"runtimeHandler"`
	CreatedAt      int64                          `json:"createdAt"`
	// Ready is false once StopPodSandbox has run.
	Ready        bool     `json:"ready"`
	LogDirectory string   `json:"logDirectory,omitempty"`
	CgroupParent string   `json:"cgroupParent,omitempty"`
	Netns        string   `json:"netns,omitempty"`
	IPs          []string `json:"ips,omitempty"`
	// Net is what the Network made: the guest's NICs, DNS, host name.
	Net *Attachment `json:"net,omitempty"`
}

// bootSpec says how the guest boots: from a disk (firmware) or a kernel.
type bootSpec struct {
	// Disk is the image's disk file in the cache, DiskFormat "qcow2" or "raw".
	Disk       string `json:"disk,omitempty"`
	DiskFormat string `json:"diskFormat,omitempty"`
	// Kernel, Initrd and Cmdline are for direct kernel boot.
	Kernel  string `json:"kernel,omitempty"`
	Initrd  string `json:"initrd,omitempty"`
	Cmdline string `json:"cmdline,omitempty"`
}

// containerState is what the backend remembers of a VM; the process state
// (running, exited) comes from the supervisor's files.
type containerState struct {
	ID          string                        `json:"id"`
	SandboxID   string                        `json:"sandboxId"`
	Metadata    *runtimeapi.ContainerMetadata `json:"metadata"`
	Image       *runtimeapi.ImageSpec         `json:"image"`
	ImageRef    string                        `json:"imageRef"`
	Labels      map[string]string             `json:"labels,omitempty"`
	Annotations map[string]string             `json:"annotations,omitempty"`
	// LogPath is absolute: the sandbox's log directory + the container's path.
	LogPath   string   `json:"logPath,omitempty"`
	CreatedAt int64    `json:"createdAt"`
	StartedAt int64    `json:"startedAt,omitempty"`
	Boot      bootSpec `json:"boot"`
	VCPUs     int      `json:"vcpus"`
	MemoryMiB int      `json:"memoryMiB"`
	// Accel is "kvm" or "tcg".
	Accel string `json:"accel"`
	// MemoryLimit and CPU quota/period/shares go to the container's cgroup.
	MemoryLimit int64 `json:"memoryLimit,omitempty"`
	CPUQuota    int64 `json:"cpuQuota,omitempty"`
	CPUPeriod   int64 `json:"cpuPeriod,omitempty"`
	CPUShares   int64 `json:"cpuShares,omitempty"`
	// Cgroup is the VM's cgroup path relative to each hierarchy; empty
	// when the kubelet passed no cgroup parent.
	Cgroup string `json:"cgroup,omitempty"`
	// UID is QEMU's uid and gid (runas.go), given at start.
	UID uint32 `json:"uid,omitempty"`
	// OverlayMax caps the overlay's size in bytes (the owner's knob when
	// the container was created).
	OverlayMax int64 `json:"overlayMax,omitempty"`
	// Passthrough are the claimed PCI and USB devices (passthrough.go).
	Passthrough Passthrough `json:"passthrough,omitempty"`
}

// store reads and writes the state files. It takes no locks: the backend
// serialises mutations per object.
type store struct {
	dir string
	// log and reported: an unreadable state file is skipped by the
	// listings (one bad file must not hide every pod from the kubelet) and
	// reported once.
	log      *logrus.Entry
	reported *sync.Map // path -> struct{}
}

// skipBad reports an unreadable state file the first time it is seen.
func (s store) skipBad(kind, id, dir string, err error) {
	if s.log == nil || s.reported == nil {
		return
	}
	if _, seen := s.reported.LoadOrStore(kind+"/"+id, struct{}{}); !seen {
		s.log.WithError(err).WithField(kind, id).Errorf("the VM backend's state of %s %s is unreadable; it is left out of the listings (remove %s to drop it)", kind, id, dir)
	}
}

func (s store) sandboxDir(id string) string   { return filepath.Join(s.dir, sandboxesDir, id) }
func (s store) containerDir(id string) string { return filepath.Join(s.dir, id) }
func (s store) imageDir(hex string) string    { return filepath.Join(s.dir, imagesDir, hex) }

func (s store) saveSandbox(sb *sandboxState) error {
	return vmm.WriteJSON(filepath.Join(s.sandboxDir(sb.ID), sandboxFile), sb)
}

func (s store) saveContainer(c *containerState) error {
	return vmm.WriteJSON(filepath.Join(s.containerDir(c.ID), containerFile), c)
}

// sandbox returns the sandbox or an error wrapping fs.ErrNotExist.
func (s store) sandbox(id string) (*sandboxState, error) {
	if !validID(id) {
		return nil, fs.ErrNotExist
	}
	var sb sandboxState
	if err := vmm.ReadJSON(filepath.Join(s.sandboxDir(id), sandboxFile), &sb); err != nil {
		return nil, err
	}
	return &sb, nil
}

func (s store) container(id string) (*containerState, error) {
	if !validID(id) {
		return nil, fs.ErrNotExist
	}
	var c containerState
	if err := vmm.ReadJSON(filepath.Join(s.containerDir(id), containerFile), &c); err != nil {
		return nil, err
	}
	return &c, nil
}

func (s store) sandboxes() ([]*sandboxState, error) {
	ids, err := listIDs(filepath.Join(s.dir, sandboxesDir))
	if err != nil {
		return nil, err
	}
	var out []*sandboxState
	for _, id := range ids {
		sb, err := s.sandbox(id)
		if errors.Is(err, fs.ErrNotExist) {
			continue // half created or half removed
		}
		if err != nil {
			s.skipBad("sandbox", id, s.sandboxDir(id), err)
			continue
		}
		out = append(out, sb)
	}
	return out, nil
}

func (s store) containers() ([]*containerState, error) {
	ids, err := listIDs(s.dir)
	if err != nil {
		return nil, err
	}
	var out []*containerState
	for _, id := range ids {
		c, err := s.container(id)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			s.skipBad("container", id, s.containerDir(id), err)
			continue
		}
		out = append(out, c)
	}
	return out, nil
}

// exit returns the exit record of a container, nil if QEMU has not exited.
func (s store) exit(id string) (*vmm.Exit, error) {
	var e vmm.Exit
	err := vmm.ReadJSON(filepath.Join(s.containerDir(id), vmm.ExitFile), &e)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &e, nil
}

func listIDs(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range ents {
		if e.IsDir() && validID(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// validID accepts the IDs the backend makes (lower-case hex), so that an ID
// from the kubelet can never name a path outside the state directory.
func validID(id string) bool {
	if len(id) != idLen {
		return false
	}
	for _, r := range id {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return false
		}
	}
	return true
}
