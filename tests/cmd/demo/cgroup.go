package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// cgroupMount is where the host mounts its cgroup hierarchies.
const cgroupMount = "/sys/fs/cgroup"

// cgroupPaths returns the directory of cgroup name (e.g. "/evelet-demo") in
// every hierarchy: one per mounted v1 hierarchy (co-mounted controllers
// such as cpu,cpuacct counted once), or the single v2 one.
func cgroupPaths(name string) []string {
	if _, err := os.Stat(filepath.Join(cgroupMount, "cgroup.controllers")); err == nil {
		return []string{filepath.Join(cgroupMount, name)}
	}
	ents, err := os.ReadDir(cgroupMount)
	if err != nil {
		return nil
	}
	var res []string
	for _, e := range ents {
		if !e.IsDir() { // symlinks such as cpu -> cpu,cpuacct are skipped
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

// makeCgroupRoot creates the kubelet's cgroupRoot in every hierarchy, as the
// kubelet requires before it starts (it checks, it does not create). A new
// cpuset cgroup has no CPUs or memory nodes: it gets its parent's.
func makeCgroupRoot(name string) error {
	dirs := cgroupPaths(name)
	if len(dirs) == 0 {
		return fmt.Errorf("no cgroup hierarchies under %s", cgroupMount)
	}
	for _, d := range dirs {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("cgroup %s: %w", d, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			cur, err := os.ReadFile(filepath.Join(d, f))
			if err != nil || strings.TrimSpace(string(cur)) != "" {
				continue
			}
			parent, err := os.ReadFile(filepath.Join(filepath.Dir(d), f))
			if err != nil {
				return fmt.Errorf("cgroup %s: %w", d, err)
			}
			if err := os.WriteFile(filepath.Join(d, f), parent, 0o644); err != nil {
				return fmt.Errorf("cgroup %s: %w", d, err)
			}
		}
	}
	return nil
}

// cgroupTasks counts the processes in dir and every cgroup below it.
func cgroupTasks(dir string) int {
	return len(cgroupPIDs(dir))
}

// cgroupPIDs lists the processes in the given cgroups and their children.
func cgroupPIDs(dirs ...string) []int {
	var pids []int
	for _, dir := range dirs {
		pids = append(pids, cgroupPIDsUnder(dir)...)
	}
	return pids
}

func cgroupPIDsUnder(dir string) []int {
	var pids []int
	filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil || !e.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// removeCgroupRoot kills what is left in the demo's cgroups (pods of a
// kubelet that died) and removes them, deepest first.
func removeCgroupRoot(name string) error {
	var errs []error
	for _, d := range cgroupPaths(name) {
		for _, pid := range cgroupPIDs(d) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		var sub []string
		filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				sub = append(sub, p)
			}
			return nil
		})
		sort.Slice(sub, func(i, j int) bool { return len(sub[i]) > len(sub[j]) })
		for _, s := range sub {
			if err := rmdirRetry(s); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// rmdirRetry removes one cgroup; killed processes may take a moment to
// leave it (EBUSY until then).
func rmdirRetry(dir string) error {
	var err error
	for i := 0; i < 50; i++ {
		if err = syscall.Rmdir(dir); err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			break
		}
		waitABit()
	}
	return fmt.Errorf("cgroup %s: %w", dir, err)
}
