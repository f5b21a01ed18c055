package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/cni/meta"
	"github.com/lf-edge/evelet/doctor"
	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/version"
	"google.golang.org/grpc/grpclog"
)

// runDoctor checks the device against what the agent needs (docs/doctor.md).
// Its flags are the agent's, with the agent's defaults, so the agent's
// command line can be given to it; exit 1 when a check FAILs.
func runDoctor(args []string) int {
	fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
	f := newAgentFlags(fs)
	timeout := fs.Duration("timeout", 5*time.Second, "bound of each network probe")
	out := fs.String("o", "", "output format: '' (text) or json")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *out != "" && *out != "json" {
		fmt.Fprintf(os.Stderr, "evelet doctor: unknown output format %q\n", *out)
		return 2
	}
	vm := vmConfig(*f.noVM, *f.vmCNIConf, *f.vmCNIBin, *f.kvmDev, f.cniOpts)
	pick := func(flag, def []string) []string {
		if flag != nil {
			return flag
		}
		return def
	}
	self, _ := os.Executable() // "": the role-binaries check says so
	cfg := doctor.Config{
		StateDir: *f.stateDir, JoinFile: *f.joinFile,
		EVERoot:            pubsub.Root{Run: *f.eveRun, Persist: *f.evePersist},
		ContainerdEndpoint: *f.ctrd,
		CNIBinDir:          f.cniOpts.BinDir, CNIConfDir: f.cniOpts.ConfDir, DefaultNetwork: f.cniOpts.DefaultNetwork,
		NADPluginTypes: pick(f.cniOpts.PluginTypes, agent.DefaultCNIPluginTypes),
		NADIPAMTypes:   pick(f.cniOpts.IPAMTypes, agent.DefaultCNIIPAMTypes),
		// The agent installs these into --cni-bin-dir itself.
		OwnPlugins: []string{meta.PluginType, "eve-ni"},
		VMPods:     !vm.Disabled, VMCNIConfDir: vm.CNIConfDir, VMCNIBinDirs: vm.CNIBinDirs, KVMDevice: vm.KVMDevice,
		KubeProxy:         *f.kubeProxy,
		NodeDNS:           *f.nodeDNS,
		Self:              self,
		KubeletCgroupRoot: *f.cgroupRoot, CgroupDriver: *f.cgroupDriver,
		KubeletVersion: version.Kubelet(),
		Timeout:        *timeout,
	}
	// grpc logs every failed connect attempt; the containerd check reports
	// the outcome itself.
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, os.Stderr))
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	rs := doctor.Run(ctx, cfg)
	if *out == "json" {
		doctor.WriteJSON(os.Stdout, rs)
	} else {
		doctor.WriteText(os.Stdout, rs)
	}
	if doctor.Failed(rs) {
		if *out == "" {
			fmt.Fprintf(os.Stderr, "evelet doctor: %d check(s) failed\n", count(rs, doctor.Fail))
		}
		return 1
	}
	return 0
}

func count(rs []doctor.Result, s doctor.Status) int {
	n := 0
	for _, r := range rs {
		if r.Status == s {
			n++
		}
	}
	return n
}
