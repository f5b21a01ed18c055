package main

import (
	"strings"

	"github.com/lf-edge/evelet/agent"
)

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
