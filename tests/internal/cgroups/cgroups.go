// Package cgroups makes and removes the kubelet cgroup roots of simulated
// devices (the demo's, tests/devnet's) in every cgroup hierarchy of the host.
package cgroups

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// Mount is where the host mounts its cgroup hierarchies.
const Mount = "/sys/fs/cgroup"

// Dirs returns cgroup name's directory (e.g. "/evelet-demo") in every
// hierarchy: one per mounted v1 hierarchy (co-mounted controllers counted
// once; symlinks such as cpu -> cpu,cpuacct skipped), or the single v2 one.
func Dirs(name string) []string {
	if _, err := os.Stat(filepath.Join(Mount, "cgroup.controllers")); err == nil {
		return []string{filepath.Join(Mount, name)}
	}
	ents, err := os.ReadDir(Mount)
	if err != nil {
		return nil
	}
	var res []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		h := filepath.Join(Mount, e.Name())
		if _, err := os.Stat(filepath.Join(h, "cgroup.procs")); err != nil {
			continue
		}
		res = append(res, filepath.Join(h, name))
	}
	return res
}

// MakeRoot creates cgroup name in every hierarchy, as the kubelet requires of
// its cgroupRoot (it checks, it does not create). A new cpuset cgroup has no
// CPUs or memory nodes: it gets its parent's.
func MakeRoot(name string) error {
	dirs := Dirs(name)
	if len(dirs) == 0 {
		return fmt.Errorf("no cgroup hierarchies under %s", Mount)
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

// PIDs lists the processes in the given cgroup directories and every
// cgroup below them.
func PIDs(dirs ...string) []int {
	var pids []int
	for _, dir := range dirs {
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
	}
	return pids
}

// Existing reports the hierarchies where cgroup name still exists.
func Existing(name string) []string {
	var res []string
	for _, d := range Dirs(name) {
		if _, err := os.Stat(d); err == nil {
			res = append(res, d)
		}
	}
	return res
}

// RemoveRoot removes the cgroup tree of name in every hierarchy, deepest
// first. Its processes must have been killed: one may take a moment to
// leave its cgroup (EBUSY until then), so each removal is retried until
// timeout.
func RemoveRoot(name string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, d := range Dirs(name) {
		var sub []string
		filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				sub = append(sub, p)
			}
			return nil
		})
		sort.Slice(sub, func(i, j int) bool { return len(sub[i]) > len(sub[j]) })
		for _, s := range sub {
			var last error
			err := wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(context.Context) (bool, error) {
				last = syscall.Rmdir(s)
				if last == nil || errors.Is(last, syscall.ENOENT) {
					return true, nil
				}
				if errors.Is(last, syscall.EBUSY) {
					return false, nil // a killed process has not left yet
				}
				return false, last
			})
			if err != nil {
				if last == nil {
					last = err
				}
				return fmt.Errorf("removing cgroup %s: %w", s, last)
			}
		}
	}
	return nil
}
