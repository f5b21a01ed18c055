package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/cri/vm/vmm"
)

// runVMM is `evelet vmm <container-dir>`: the detached supervisor of one
// VM (cri/vm/vmm.Run). The VM backend starts it; it is not for users.
func runVMM(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: evelet vmm <container-dir>")
		return 2
	}
	log := logrus.NewEntry(logrus.StandardLogger()).WithField("vm", args[0])
	if err := vmm.Run(args[0], log); err != nil {
		log.WithError(err).Error("VM supervisor")
		return 1
	}
	return 0
}

// vmConfig is the agent's VM pod configuration from its flags: VM pods use
// the same CNI configuration as container pods unless told otherwise.
func vmConfig(disabled bool, cniConf, cniBin, kvmDev string, cni agent.CNIOptions) agent.VMConfig {
	if cniConf == "" {
		cniConf = cni.ConfDir
	}
	if cniBin == "" {
		cniBin = cni.BinDir
	}
	if cniBin == "" {
		cniBin = "/opt/cni/bin"
	}
	return agent.VMConfig{Disabled: disabled, CNIConfDir: cniConf, CNIBinDirs: strings.Split(cniBin, ","), KVMDevice: kvmDev}
}
