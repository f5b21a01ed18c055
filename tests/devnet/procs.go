package devnet

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/lf-edge/evelet/tests/internal/proc"
	"k8s.io/apimachinery/pkg/util/wait"
)

// owner describes what makes a process part of one device. A process is
// the device's when any of the three holds; none is a process name.
type owner struct {
	netnsInos  []uint64 // the device's network namespaces, this boot's and earlier ones' (agent, kubelet, containerd, shims, host-network pods)
	cgroupRoot string   // the kubelet's cgroup root (every pod process), e.g. "/evdev-1"
	ctrdSocket string   // containerd's socket: shims name it in "-address"
}

// pids lists the live (not zombie) processes the device owns.
func (o owner) pids() []int {
	var res []int
	for _, pid := range proc.PIDs() {
		if st, ok := proc.ReadStat(pid); !ok || st.State == 'Z' || st.State == 'X' {
			continue
		}
		if o.inNetNS(pid) || o.inCgroup(pid) || o.isShim(pid) {
			res = append(res, pid)
		}
	}
	return res
}

func (o owner) inNetNS(pid int) bool {
	if len(o.netnsInos) == 0 {
		return false
	}
	l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return false
	}
	for _, ino := range o.netnsInos {
		if l == fmt.Sprintf("net:[%d]", ino) {
			return true
		}
	}
	return false
}

// inCgroup: /proc/<pid>/cgroup has one line per v1 hierarchy (or the
// single v2 one), "<id>:<controllers>:<path>".
func (o owner) inCgroup(pid int) bool {
	if o.cgroupRoot == "" {
		return false
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) == 3 && (parts[2] == o.cgroupRoot || strings.HasPrefix(parts[2], o.cgroupRoot+"/")) {
			return true
		}
	}
	return false
}

func (o owner) isShim(pid int) bool {
	if o.ctrdSocket == "" {
		return false
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	argv := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	for i, a := range argv {
		if (a == "-address" || a == "--address") && i+1 < len(argv) && argv[i+1] == o.ctrdSocket {
			return true
		}
		if a == "-address="+o.ctrdSocket || a == "--address="+o.ctrdSocket {
			return true
		}
	}
	return false
}

// killAll SIGKILLs every process the device owns, again and again (a shim
// or kubelet may start one more while the sweep runs), until none is left
// or the timeout passes.
func (o owner) killAll(timeout time.Duration) error {
	var pids []int
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		if pids = o.pids(); len(pids) == 0 {
			return true, nil
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("devnet: processes %v survived SIGKILL for %v", pids, timeout)
	}
	return nil
}

// describe renders pids with their command lines, for error messages.
func describe(pids []int) string {
	var b []string
	for _, p := range pids {
		raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		b = append(b, fmt.Sprintf("%d %q", p, strings.ReplaceAll(strings.TrimRight(string(raw), "\x00"), "\x00", " ")))
	}
	return strings.Join(b, "; ")
}
