// Command evelet-vmm is the detached supervisor of one VM pod's QEMU
// (cri/vm/vmm.Run), one process per running VM. The VM backend starts it
// as `evelet-vmm vmm <container-dir>` from beside the agent's binary;
// `evelet vmm` hands on to it. A binary of its own because a device runs
// one per VM: it links only the supervisor, not the agent.
package main

import (
	"fmt"
	"os"

	"github.com/sirupsen/logrus"

	"github.com/lf-edge/evelet/cri/vm/vmm"
	"github.com/lf-edge/evelet/internal/nodebin"
)

func main() {
	args := nodebin.Args("vmm")
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: evelet-vmm [vmm] <container-dir>")
		os.Exit(2)
	}
	log := logrus.NewEntry(logrus.StandardLogger()).WithField("vm", args[0])
	if err := vmm.Run(args[0], log); err != nil {
		log.WithError(err).Error("VM supervisor")
		os.Exit(1)
	}
}
