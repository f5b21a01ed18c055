package vm

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/lf-edge/evelet/cri/vm/vmm"
)

// qemuArgs is QEMU's command line for a container. Nothing of the host is
// given to the guest but the overlay (or the image's kernel), the sockets
// in the container's directory and the taps of the pod's netns: no
// defaults, no user config, no display, and QEMU's seccomp sandbox on.
//
// QEMU opens all of these as root, then drops to the VM's own uid and gid
// (-runas, runas.go) with no capability left; it starts paused (-S) and
// the supervisor resumes the guest on its own monitor once it has seen the
// drop. The sandbox allows set*id calls (elevateprivileges=allow): QEMU
// installs its seccomp filter before it changes uid, so "deny" kills QEMU
// at its own setgid (SIGSYS, tested on QEMU 7.2). After the drop every id
// is the VM's and no capability is left, so a set*id call can only set
// what it already is, and seccomp's no_new_privs plus spawn=deny keep it
// from executing a set-user-ID program.
//
// A write error on the overlay pauses the guest (werror=stop; EFBIG past
// the owner's cap, which the supervisor sets as QEMU's RLIMIT_FSIZE): the
// supervisor hears it on its monitor and ends the VM with a reason.
func qemuArgs(c *containerState, dir string, nics []NIC) []string {
	cpu := "max"
	if c.Accel == "kvm" {
		// arch-capabilities off: under some nested hypervisors KVM refuses
		// that MSR and QEMU aborts at start; the guest only loses a hint
		// about which CPU bugs it need not mitigate.
		cpu = "host,arch-capabilities=off"
	}
	a := []string{
		"-name", "guest=" + safeName(c.Metadata.GetName()),
		"-machine", "q35",
		"-accel", accel(c.Accel),
		"-cpu", cpu,
		"-smp", strconv.Itoa(c.VCPUs),
		"-m", strconv.Itoa(c.MemoryMiB),
		"-nodefaults", "-no-user-config", "-display", "none",
		"-sandbox", "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny",
		"-runas", fmt.Sprintf("%d:%d", c.UID, c.UID),
		"-S",
		"-chardev", "socket,id=vmm,path=" + filepath.Join(dir, vmm.MonitorSocket) + ",server=on,wait=off",
		"-mon", "chardev=vmm,mode=control",
		"-msg", "timestamp=off",
		// The serial console is QEMU's stdio, which the supervisor pumps.
		"-chardev", "stdio,id=console,signal=off",
		"-serial", "chardev:console",
		"-qmp", "unix:" + filepath.Join(dir, qmpSocket) + ",server=on,wait=off",
		"-chardev", "socket,id=qga,path=" + filepath.Join(dir, qgaSocket) + ",server=on,wait=off",
		"-device", "virtio-serial-pci,id=vserial",
		"-device", "virtserialport,bus=vserial.0,chardev=qga,name=org.qemu.guest_agent.0",
		"-device", "virtio-rng-pci",
	}
	if c.Boot.Kernel != "" {
		a = append(a, "-kernel", c.Boot.Kernel, "-initrd", c.Boot.Initrd)
		if c.Boot.Cmdline != "" {
			a = append(a, "-append", c.Boot.Cmdline)
		}
	} else {
		a = append(a, "-drive", "file="+filepath.Join(dir, overlayFile)+",format=qcow2,if=virtio,cache=writeback,discard=unmap,werror=stop")
	}
	for i, n := range nics {
		id := fmt.Sprintf("net%d", i)
		a = append(a,
			"-netdev", fmt.Sprintf("tap,id=%s,ifname=%s,script=no,downscript=no", id, n.Tap),
			"-device", fmt.Sprintf("virtio-net-pci,netdev=%s,mac=%s", id, n.MAC))
	}
	return append(a, c.Passthrough.qemuArgs()...)
}

// tcgCacheMiB is TCG's translation cache. QEMU's default (up to 1 GiB,
// taken from host memory as the guest runs) would be most of a small VM's
// overhead; 16 MiB costs little speed for the guests a device runs.
const tcgCacheMiB = 16

func accel(a string) string {
	if a == "tcg" {
		return fmt.Sprintf("tcg,tb-size=%d", tcgCacheMiB)
	}
	return a
}

// safeName keeps a name usable inside QEMU's comma-separated options.
func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r == ',' || r == '=' || r < ' ' {
			return '_'
		}
		return r
	}, s)
}
