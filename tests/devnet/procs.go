package devnet

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/lf-edge/evelet/tests/internal/proc"
)

// owner describes what makes a process part of one device. A process is
// the device's when any of the three holds; none is a process name.
type owner struct {
	netnsIno   uint64 // the device's network namespace (agent, kubelet, containerd, shims, host-network pods)
	cgroupRoot string // the kubelet's cgroup root (every pod process), e.g. "/evdev-1"
	ctrdSocket string // containerd's socket: shims name it in "-address"
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
	if o.netnsIno == 0 {
		return false
	}
	l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	return err == nil && l == fmt.Sprintf("net:[%d]", o.netnsIno)
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
	deadline := time.Now().Add(timeout)
	for {
		pids := o.pids()
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("devnet: processes %v survived SIGKILL for %v", pids, timeout)
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
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

// cgroupMount is where the host mounts its cgroup hierarchies.
const cgroupMount = "/sys/fs/cgroup"

// cgroupDirs returns cgroup name's directory in every hierarchy: one per
// mounted v1 hierarchy (co-mounted controllers counted once; symlinks
// such as cpu -> cpu,cpuacct skipped), or the single v2 one.
func cgroupDirs(name string) []string {
	if _, err := os.Stat(filepath.Join(cgroupMount, "cgroup.controllers")); err == nil {
		return []string{filepath.Join(cgroupMount, name)}
	}
	ents, err := os.ReadDir(cgroupMount)
	if err != nil {
		return nil
	}
	var res []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		h := filepath.Join(cgroupMount, e.Name())
		if _, err := os.Stat(filepath.Join(h, "cgroup.procs")); err != nil {
			continue
		}
		res = append(res, filepath.Join(h, name))
	}
	return res
}

// makeCgroupRoot creates the kubelet's cgroup root in every hierarchy (the
// kubelet checks it exists, it does not create it). A new cpuset cgroup
// has no CPUs or memory nodes: it gets its parent's.
func makeCgroupRoot(name string) error {
	dirs := cgroupDirs(name)
	if len(dirs) == 0 {
		return fmt.Errorf("devnet: no cgroup hierarchies under %s", cgroupMount)
	}
	for _, d := range dirs {
		if err := os.Mkdir(d, 0o755); err != nil && !os.IsExist(err) {
			return fmt.Errorf("devnet: cgroup %s: %w", d, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			cur, err := os.ReadFile(filepath.Join(d, f))
			if err != nil || strings.TrimSpace(string(cur)) != "" {
				continue
			}
			parent, err := os.ReadFile(filepath.Join(filepath.Dir(d), f))
			if err != nil {
				return fmt.Errorf("devnet: cgroup %s: %w", d, err)
			}
			if err := os.WriteFile(filepath.Join(d, f), parent, 0o644); err != nil {
				return fmt.Errorf("devnet: cgroup %s: %w", d, err)
			}
		}
	}
	return nil
}

// removeCgroupRoot removes the cgroup tree of name in every hierarchy,
// deepest first. Its processes must be dead; a killed process may take a
// moment to leave its cgroup (EBUSY until then).
func removeCgroupRoot(name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, d := range cgroupDirs(name) {
		var sub []string
		filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				sub = append(sub, p)
			}
			return nil
		})
		sort.Slice(sub, func(i, j int) bool { return len(sub[i]) > len(sub[j]) })
		for _, s := range sub {
			for {
				err := syscall.Rmdir(s)
				if err == nil || err == syscall.ENOENT {
					break
				}
				if err != syscall.EBUSY || time.Now().After(deadline) {
					return fmt.Errorf("devnet: removing cgroup %s: %w", s, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	return nil
}

// cgroupExists reports the hierarchies where cgroup name still exists.
func cgroupExists(name string) []string {
	var res []string
	for _, d := range cgroupDirs(name) {
		if _, err := os.Stat(d); err == nil {
			res = append(res, d)
		}
	}
	return res
}
