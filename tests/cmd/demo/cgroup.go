package main

import (
	"syscall"
	"time"

	"github.com/lf-edge/evelet/tests/internal/cgroups"
)

// removeCgroupRoot kills what is left in the demo's cgroups (pods of a
// kubelet that died) and removes them, deepest first.
func removeCgroupRoot(name string) error {
	for _, pid := range cgroups.PIDs(cgroups.Dirs(name)...) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	return cgroups.RemoveRoot(name, 5*time.Second)
}
