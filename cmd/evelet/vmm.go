package main

import (
	"fmt"
	"os"

	"github.com/sirupsen/logrus"

	"github.com/lf-edge/evelet/cri/vm"
)

// runVMM is `evelet vmm <container-dir>`: the detached supervisor of one
// VM (cri/vm.RunSupervisor). The VM backend starts it; it is not for users.
func runVMM(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: evelet vmm <container-dir>")
		return 2
	}
	log := logrus.NewEntry(logrus.StandardLogger()).WithField("vm", args[0])
	if err := vm.RunSupervisor(args[0], log); err != nil {
		log.WithError(err).Error("VM supervisor")
		return 1
	}
	return 0
}
