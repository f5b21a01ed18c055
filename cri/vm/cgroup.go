package vm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
	"k8s.io/apimachinery/pkg/util/wait"
)

// cgroupRoot is where cgroup v1 hierarchies are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// containerCgroup is the cgroup path (relative to each hierarchy) of a VM:
// a child of the pod's cgroup parent that the kubelet passed, so the
// kubelet's pod accounting, limits and eviction cover QEMU.
func containerCgroup(parent, id string) string {
	if parent == "" {
		return ""
	}
	if systemdSlice(parent) {
		return "" // not supported: checkConfinement refuses the pod
	}
	return filepath.Join(parent, "evelet-vm-"+id)
}

// systemdSlice says whether a cgroup parent is a systemd slice name (the
// kubelet's systemd driver: "kubepods-burstable-pod<uid>.slice"), not a
// cgroupfs path ("/kubepods/burstable/pod<uid>", or critest's "/test.slice").
func systemdSlice(parent string) bool {
	return strings.HasSuffix(parent, ".slice") && !strings.Contains(parent, "/")
}

// listHierarchies is hierarchies; tests replace it.
var listHierarchies = hierarchies

// checkConfinement refuses a VM pod that would run outside the pod's
// cgroup: QEMU is only put in cgroup v1 hierarchies (cgroupfs driver), so
// on a cgroup v2 (unified) host, or under the systemd driver, it would run
// unconfined, beyond the kubelet's limits and accounting.
func checkConfinement(parent string) error {
	if parent == "" {
		return nil // no pod cgroup to join (not the kubelet's way)
	}
	if systemdSlice(parent) {
		return fmt.Errorf("the kubelet uses the systemd cgroup driver (cgroup parent %s); VM pods support the cgroupfs driver only, and QEMU must not run outside the pod's cgroup", parent)
	}
	hs, err := listHierarchies()
	if err != nil {
		return fmt.Errorf("reading the cgroup hierarchies: %w", err)
	}
	need := map[string]bool{"memory": false, "cpu": false, "cpuacct": false}
	for _, h := range hs {
		for c := range need {
			if h.has(c) {
				need[c] = true
			}
		}
	}
	var missing []string
	for c, ok := range need {
		if !ok {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("this device has no cgroup v1 hierarchy with the %s controller(s) (a cgroup v2 host?); VM pods need cgroup v1 so that QEMU runs inside the pod's cgroup, never unconfined", strings.Join(missing, ", "))
	}
	return nil
}

// hierarchy is one mounted cgroup v1 hierarchy and its controllers.
type hierarchy struct {
	dir   string
	ctrls map[string]bool
}

func (h hierarchy) has(ctrl string) bool { return h.ctrls[ctrl] }

// hierarchies lists the mounted cgroup v1 hierarchies. Controllers come
// from the mount's options: cpu and cpuacct may share one mount
// ("cpu,cpuacct") or have one each, whatever the directory is called.
func hierarchies() ([]hierarchy, error) {
	ms, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup"))
	if err != nil {
		return nil, err
	}
	var out []hierarchy
	for _, m := range ms {
		if !strings.HasPrefix(m.Mountpoint, cgroupRoot+"/") {
			continue
		}
		h := hierarchy{dir: m.Mountpoint, ctrls: map[string]bool{}}
		for _, o := range strings.Split(m.VFSOptions, ",") {
			h.ctrls[o] = true
		}
		out = append(out, h)
	}
	return out, nil
}

// makeCgroups creates the VM's cgroup in every hierarchy and sets its
// limits; it returns the directories the supervisor joins.
func makeCgroups(rel string, c *containerState) ([]string, error) {
	if rel == "" {
		return nil, nil
	}
	hs, err := listHierarchies()
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, h := range hs {
		d := filepath.Join(h.dir, rel)
		if err := mkCgroup(h, rel); err != nil {
			return dirs, err
		}
		dirs = append(dirs, d)
		set := func(file string, v int64) error {
			if err := os.WriteFile(filepath.Join(d, file), []byte(strconv.FormatInt(v, 10)), 0o644); err != nil {
				return fmt.Errorf("cgroup %s/%s: %w", d, file, err)
			}
			return nil
		}
		if h.has("memory") && c.MemoryLimit > 0 {
			if err := set("memory.limit_in_bytes", c.MemoryLimit); err != nil {
				return dirs, err
			}
		}
		if h.has("cpu") {
			if c.CPUShares > 0 {
				if err := set("cpu.shares", c.CPUShares); err != nil {
					return dirs, err
				}
			}
			if c.CPUQuota > 0 && c.CPUPeriod > 0 {
				if err := set("cpu.cfs_period_us", c.CPUPeriod); err != nil {
					return dirs, err
				}
				if err := set("cpu.cfs_quota_us", c.CPUQuota); err != nil {
					return dirs, err
				}
			}
		}
	}
	return dirs, nil
}

// mkCgroup creates rel in hierarchy h level by level; a new cpuset cgroup
// starts with no CPUs and no memory nodes (nothing could join it), so it
// takes its parent's.
func mkCgroup(h hierarchy, rel string) error {
	d := h.dir
	for _, el := range strings.Split(strings.Trim(rel, "/"), "/") {
		parent := d
		d = filepath.Join(d, el)
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("cgroup %s: %w", d, err)
		}
		if !h.has("cpuset") {
			continue
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			cur, _ := os.ReadFile(filepath.Join(d, f))
			if strings.TrimSpace(string(cur)) != "" {
				continue
			}
			if b, err := os.ReadFile(filepath.Join(parent, f)); err == nil {
				if err := os.WriteFile(filepath.Join(d, f), b, 0o644); err != nil {
					return fmt.Errorf("cgroup %s/%s: %w", d, f, err)
				}
			}
		}
	}
	return nil
}

// removeCgroups removes the VM's cgroup directories. Whatever still runs
// in them belongs to this VM (a supervisor or QEMU the backend lost track
// of) and is killed first: a cgroup with processes cannot be removed, and
// RemoveContainer would fail forever.
func removeCgroups(rel string) error {
	if rel == "" {
		return nil
	}
	hs, err := hierarchies()
	if err != nil {
		return err
	}
	if err := killCgroup(hs, rel); err != nil {
		return err
	}
	var errs []error
	for _, h := range hs {
		if err := os.Remove(filepath.Join(h.dir, rel)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killCgroup SIGKILLs every process in the VM's cgroups and waits until
// they are gone (a killed process leaves cgroup.procs once it has exited).
func killCgroup(hs []hierarchy, rel string) error {
	var left []int
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		left = left[:0]
		for _, h := range hs {
			b, err := os.ReadFile(filepath.Join(h.dir, rel, "cgroup.procs"))
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
					left = append(left, pid)
				}
			}
		}
		for _, pid := range left {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		return len(left) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("processes %v still in the VM's cgroup %s after SIGKILL: %w", left, rel, err)
	}
	return nil
}

// cgroupValue reads an integer from a file of the VM's cgroup in the
// hierarchy of controller ctrl.
func cgroupValue(rel, ctrl, file string) (uint64, bool) {
	hs, _ := hierarchies()
	for _, h := range hs {
		if h.has(ctrl) {
			b, err := os.ReadFile(filepath.Join(h.dir, rel, file))
			if err != nil {
				continue
			}
			v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
			if err != nil {
				continue
			}
			return v, true
		}
	}
	return 0, false
}

// memoryStat reads one key of the VM's memory.stat.
func memoryStat(rel, key string) (uint64, bool) {
	hs, _ := hierarchies()
	for _, h := range hs {
		if !h.has("memory") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(h.dir, rel, "memory.stat"))
		if err != nil {
			return 0, false
		}
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, " "); ok && k == key {
				n, err := strconv.ParseUint(v, 10, 64)
				return n, err == nil
			}
		}
	}
	return 0, false
}
