package vm

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	if strings.HasSuffix(parent, ".slice") {
		// systemd driver: the parent is a slice name, not a path.
		return "" // not supported here; documented
	}
	return filepath.Join(parent, "evelet-vm-"+id)
}

// hierarchies lists the mounted cgroup v1 hierarchies (their directories
// under cgroupRoot), one per mount.
func hierarchies() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, x := range fields {
			if x == "-" && i+1 < len(fields) && fields[i+1] == "cgroup" && strings.HasPrefix(fields[4], cgroupRoot+"/") {
				out = append(out, fields[4])
			}
		}
	}
	return out, sc.Err()
}

// makeCgroups creates the VM's cgroup in every hierarchy and sets its
// limits; it returns the directories the supervisor joins.
func makeCgroups(rel string, c *containerState) ([]string, error) {
	if rel == "" {
		return nil, nil
	}
	hs, err := hierarchies()
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, h := range hs {
		d := filepath.Join(h, rel)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return dirs, fmt.Errorf("cgroup %s: %w", d, err)
		}
		dirs = append(dirs, d)
		base := filepath.Base(h)
		set := func(file string, v int64) error {
			if err := os.WriteFile(filepath.Join(d, file), []byte(strconv.FormatInt(v, 10)), 0o644); err != nil {
				return fmt.Errorf("cgroup %s/%s: %w", d, file, err)
			}
			return nil
		}
		if strings.Contains(base, "memory") && c.MemoryLimit > 0 {
			if err := set("memory.limit_in_bytes", c.MemoryLimit); err != nil {
				return dirs, err
			}
		}
		if strings.Contains(base, "cpu") && !strings.Contains(base, "cpuset") {
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
		if strings.Contains(base, "cpuset") {
			// A new cpuset cgroup starts empty; take the parent's sets.
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				if b, err := os.ReadFile(filepath.Join(filepath.Dir(d), f)); err == nil {
					os.WriteFile(filepath.Join(d, f), b, 0o644)
				}
			}
		}
	}
	return dirs, nil
}

// removeCgroups removes the VM's cgroup directories; they must be empty.
func removeCgroups(rel string) error {
	if rel == "" {
		return nil
	}
	hs, err := hierarchies()
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range hs {
		if err := os.Remove(filepath.Join(h, rel)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cgroupFile reads an integer from a file of the VM's cgroup in the
// hierarchy whose name contains ctrl.
func cgroupValue(rel, ctrl, file string) (uint64, bool) {
	hs, _ := hierarchies()
	for _, h := range hs {
		if strings.Contains(filepath.Base(h), ctrl) {
			b, err := os.ReadFile(filepath.Join(h, rel, file))
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
		if !strings.Contains(filepath.Base(h), "memory") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(h, rel, "memory.stat"))
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
