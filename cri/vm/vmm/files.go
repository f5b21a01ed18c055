package vmm

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/lf-edge/evelet/cri/vm/vmnet"
	"github.com/lf-edge/evelet/internal/atomicfile"
)

// The files of a container directory that the supervisor reads or writes;
// the backend reads them to learn the VM's state.
const (
	// SpecFile is the Spec, written by the backend before it starts us.
	SpecFile = "vmm.json"
	// PIDFile and QEMUPIDFile hold the supervisor's and QEMU's pids.
	PIDFile     = "vmm.pid"
	QEMUPIDFile = "qemu.pid"
	// StartedFile exists once QEMU runs and has made its sockets.
	StartedFile = "started"
	// ExitFile is the Exit, written once QEMU has exited.
	ExitFile = "exit.json"
	// ConsoleSocket serves the serial console (attach).
	ConsoleSocket = "console.sock"
	// MonitorSocket is the supervisor's own QMP monitor of QEMU (the
	// backend's is another socket): it resumes the paused guest there and
	// hears QEMU's events.
	MonitorSocket = "vmm.qmp"
	// LogFile is the supervisor's own stdout and stderr; QEMULogFile is
	// QEMU's stderr.
	LogFile     = "vmm.log"
	QEMULogFile = "qemu.log"
)

// Spec is what the supervisor runs.
type Spec struct {
	QEMU    string   `json:"qemu"`
	Args    []string `json:"args"`
	Netns   string   `json:"netns,omitempty"`
	Cgroups []string `json:"cgroups,omitempty"`
	LogPath string   `json:"logPath,omitempty"`
	// Net is the pod's attachment: the supervisor answers the guest's DHCP.
	Net *vmnet.Attachment `json:"net,omitempty"`
	// UID and GID are what QEMU drops to (its -runas) after it has opened
	// its files, devices and sockets. With Monitor set, QEMU starts paused
	// (-S) and the supervisor resumes the guest there only once it has
	// seen QEMU run as UID/GID with no capability left: the guest never
	// runs a single instruction in a root QEMU.
	UID     uint32 `json:"uid,omitempty"`
	GID     uint32 `json:"gid,omitempty"`
	Monitor string `json:"monitor,omitempty"`
	// MaxFileSize caps every file QEMU writes (RLIMIT_FSIZE), so the
	// overlay: the device owner's evelet.policy.vm-overlay-max-size. 0:
	// no cap.
	MaxFileSize int64 `json:"maxFileSize,omitempty"`
}

// RuleOverlayMaxSize names the limit in the exit message of a VM stopped
// for writing past it.
const RuleOverlayMaxSize = "vm-overlay-max-size"

// Exit is how QEMU ended, as the container status reports it.
type Exit struct {
	ExitCode   int32  `json:"exitCode"`
	FinishedAt int64  `json:"finishedAt"`
	Reason     string `json:"reason"`
	Message    string `json:"message,omitempty"`
}

// WriteJSON writes v to path, temp-then-rename: a reader never sees a
// half-written file.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, b, 0o600)
}

// ReadJSON reads path into v; a missing file is an fs.ErrNotExist error.
func ReadJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// WritePID records pid in path (temp-then-rename: a reader must never see
// it empty).
func WritePID(path string, pid int) error {
	return atomicfile.WriteFile(path, []byte(strconv.Itoa(pid)), 0o600)
}

// ReadPID reads a pid file; 0 if there is none.
func ReadPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}
