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
	"github.com/lf-edge/evelet/internal/layout"
	"github.com/lf-edge/evelet/version"
	"google.golang.org/grpc/grpclog"
)

// runDoctor checks the device against what the agent needs (docs/doctor.md).
// Its flags are the agent's, with the agent's defaults, so the agent's
// command line can be given to it; exit 1 when a check FAILs.
func runDoctor(args []string) int {
	fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
	stateDir := fs.String("state-dir", layout.DefaultStateDir, "the agent's persistent state root")
	joinFile := fs.String("join-file", "", "the agent's join file (then the EVE channel is not checked)")
	eveRun := fs.String("eve-run", "/run", "EVE's volatile root (pubsub topics)")
	evePersist := fs.String("eve-persist", "/persist", "EVE's persistent root (checkpoint)")
	ctrd := fs.String("containerd", "unix:///run/containerd-user/containerd.sock", "containerd CRI endpoint pods run on")
	vmCNIConf := fs.String("vm-cni-conf-dir", "", "as the agent's")
	vmCNIBin := fs.String("vm-cni-bin-dir", "", "as the agent's")
	noVM := fs.Bool("no-vm-pods", false, "VM pods are off: skip the VM checks")
	kvmDev := fs.String("vm-kvm-device", "/dev/kvm", "KVM device for VM pods")
	kubeProxy := fs.Bool("kube-proxy", false, "the agent runs kube-proxy: check nft")
	cgroupRoot := fs.String("kubelet-cgroup-root", "", "the kubelet's cgroup root: must exist in every hierarchy")
	cgroupDriver := fs.String("cgroup-driver", "cgroupfs", "cgroup driver shared by the kubelet and containerd")
	timeout := fs.Duration("timeout", 5*time.Second, "bound of each network probe")
	out := fs.String("o", "", "output format: '' (text) or json")
	var cniOpts agent.CNIOptions
	cniFlags(fs, &cniOpts)
	// The agent's other flags, accepted so its whole command line can be
	// given; no check depends on them.
	for _, name := range []string{"run-dir", "eve-controller-certs", "join-file-absent-for", "drain-timeout", "metrics-addr",
		"kubelet-port", "kubelet-healthz-port", "log-level"} {
		fs.String(name, "", "the agent's flag; not used by doctor")
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *out != "" && *out != "json" {
		fmt.Fprintf(os.Stderr, "evelet doctor: unknown output format %q\n", *out)
		return 2
	}
	vm := vmConfig(*noVM, *vmCNIConf, *vmCNIBin, *kvmDev, cniOpts)
	pick := func(flag, def []string) []string {
		if flag != nil {
			return flag
		}
		return def
	}
	cfg := doctor.Config{
		StateDir: *stateDir, JoinFile: *joinFile,
		EVERoot:            pubsub.Root{Run: *eveRun, Persist: *evePersist},
		ContainerdEndpoint: *ctrd,
		CNIBinDir:          cniOpts.BinDir, CNIConfDir: cniOpts.ConfDir, DefaultNetwork: cniOpts.DefaultNetwork,
		NADPluginTypes: pick(cniOpts.PluginTypes, agent.DefaultCNIPluginTypes),
		NADIPAMTypes:   pick(cniOpts.IPAMTypes, agent.DefaultCNIIPAMTypes),
		// The agent installs these into --cni-bin-dir itself.
		OwnPlugins: []string{meta.PluginType, "eve-ni"},
		VMPods:     !vm.Disabled, VMCNIConfDir: vm.CNIConfDir, VMCNIBinDirs: vm.CNIBinDirs, KVMDevice: vm.KVMDevice,
		KubeProxy:         *kubeProxy,
		KubeletCgroupRoot: *cgroupRoot, CgroupDriver: *cgroupDriver,
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
