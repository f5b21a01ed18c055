package policy

import "strings"

// runtimeDefaultCaps is the capability set containerd's CRI (and Docker)
// gives every non-privileged container. A pod may "add" these freely:
// manifests often drop ALL and add back a few of them, which grants nothing
// beyond the default.
var runtimeDefaultCaps = setOf(
	"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
	"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)

// knownCaps are the Linux capabilities (capability(7), up to Linux 6.x).
var knownCaps = setOf(
	"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
	"SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
	"IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
	"SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
	"LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
	"WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)

// normalizeCap maps "cap_sys_admin", "CAP_SYS_ADMIN" and "sys_admin" to
// "SYS_ADMIN", as the runtimes do.
func normalizeCap(c string) string {
	c = strings.ToUpper(strings.TrimSpace(c))
	return strings.TrimPrefix(c, "CAP_")
}

// safeSysctls is the kubelet's safe set (k8s.io/kubernetes v1.35
// pkg/kubelet/sysctl/safe_sysctls.go): namespaced, and isolated from other
// pods. The kubelet drops the newer ones on old kernels; containerd then
// fails such a pod anyway.
var safeSysctls = setOf(
	"kernel.shm_rmid_forced",
	"net.ipv4.ip_local_port_range",
	"net.ipv4.tcp_syncookies",
	"net.ipv4.ping_group_range",
	"net.ipv4.ip_unprivileged_port_start",
	"net.ipv4.ip_local_reserved_ports",
	"net.ipv4.tcp_keepalive_time",
	"net.ipv4.tcp_fin_timeout",
	"net.ipv4.tcp_keepalive_intvl",
	"net.ipv4.tcp_keepalive_probes",
	"net.ipv4.tcp_rmem",
	"net.ipv4.tcp_wmem",
)

const (
	nsIPC = "IPC"
	nsNet = "network"
)

// ipcSysctls are the kernel.* sysctls that belong to the IPC namespace
// (ipc_namespaces(7)); "kernel.shm" and "kernel.msg" stand for the
// "kernel.shm*"/"kernel.msg*" prefixes.
var ipcSysctls = setOf(
	"kernel.sem", "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced",
	"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.shm", "kernel.msg",
)

// sysctlNamespace returns the namespace a sysctl (or a "prefix*" pattern)
// lives in, or "" if it is not namespaced: setting it in a pod would change
// the whole device.
func sysctlNamespace(name string) string {
	n := strings.TrimSuffix(strings.TrimSuffix(name, "*"), ".")
	switch {
	case ipcSysctls[n]:
		return nsIPC
	case n == "fs.mqueue" || strings.HasPrefix(n, "fs.mqueue."):
		return nsIPC
	case n == "net" || strings.HasPrefix(n, "net."):
		return nsNet
	}
	return ""
}

// normalizeSysctl turns the slash form ("net/ipv4/ip_forward") into the dot
// form, swapping '/' and '.' when the first separator is a slash, as the
// kubelet and runc do: "net/ipv4/conf/eth0.100/forwarding" becomes
// "net.ipv4.conf.eth0/100.forwarding".
func normalizeSysctl(s string) string {
	s = strings.TrimSpace(s)
	i := strings.IndexAny(s, "./")
	if i < 0 || s[i] == '.' {
		return s
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '.':
			return '/'
		case '/':
			return '.'
		}
		return r
	}, s)
}

// matchSysctl reports whether name is allowed by pattern (exact, or
// "prefix*").
func matchSysctl(pattern, name string) bool {
	if p, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(name, p)
	}
	return pattern == name
}

// The /proc and /sys paths that the runtimes mask (bind /dev/null or an
// empty tmpfs over them) and make read-only by default. These are
// containerd's and Docker's defaults; the kubelet sends a superset for
// ProcMount Default, and empty lists for ProcMount Unmasked.
var (
	baselineMaskedPaths = []string{
		"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
	}
	baselineReadonlyPaths = []string{
		"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
	}
)

// BaselineMaskedPaths and BaselineReadonlyPaths are what a container's
// MaskedPaths and ReadonlyPaths must include unless unmasked /proc is
// allowed.
func BaselineMaskedPaths() []string   { return append([]string(nil), baselineMaskedPaths...) }
func BaselineReadonlyPaths() []string { return append([]string(nil), baselineReadonlyPaths...) }

func setOf(xs ...string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}
