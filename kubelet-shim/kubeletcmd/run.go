// Package kubeletcmd is `evelet kubelet`: the upstream kubelet with evelet's
// volume guards put into its dependencies. It is the only package that links
// the kubelet itself (k8s.io/kubernetes/cmd/kubelet, pkg/kubelet), so only
// the kubelet's own binary (cmd/evelet-kubelet) imports it.
package kubeletcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/util/validation/field"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/server/flagz"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/configz"
	"k8s.io/component-base/logs"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/component-base/version/verflag"
	zpagesfeatures "k8s.io/component-base/zpages/features"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/cmd/kubelet/app"
	"k8s.io/kubernetes/cmd/kubelet/app/options"
	"k8s.io/kubernetes/pkg/kubelet"
	kubeletconfig "k8s.io/kubernetes/pkg/kubelet/apis/config"
	kubeletconfigvalidation "k8s.io/kubernetes/pkg/kubelet/apis/config/validation"
	"k8s.io/kubernetes/pkg/kubelet/eviction"
	"k8s.io/kubernetes/pkg/kubelet/kubeletconfig/configfiles"
	utilfs "k8s.io/kubernetes/pkg/util/filesystem"

	kubeletshim "github.com/lf-edge/evelet/kubelet-shim"
)

// Run is `evelet kubelet`: the upstream kubelet (cmd/kubelet/app, the same
// flags, config file, feature gates and logging), with evelet's guards put
// into its Dependencies before it runs:
//
//   - every volume plugin is wrapped (VolumeGuard.Wrap, volumes.go): a
//     volume is judged when the kubelet builds its mounter, before it
//     creates, attaches or mounts anything on the host, which happens
//     before any CRI call (a hostPath or local PV in or above a protected
//     directory or outside the owner's allowed host paths, a plugin that
//     mounts on the host, an unbounded Memory emptyDir); FlexVolume
//     drivers are not loaded;
//   - /configz serves nothing (the handler cannot be switched off without
//     also losing logs and exec).
//
// The stock entry (app.NewKubeletCommand) builds its Dependencies and runs
// them in one closure, so this replaces that closure, calling the same
// exported steps: options, the kubelet's config file loader, validation,
// app.UnsecuredDependencies, app.Run. What it does not support: the
// drop-in directory (--config-dir), which evelet never sets.
func Run(args []string) int {
	if err := run(args); err != nil {
		klog.ErrorS(err, "kubelet")
		logs.FlushLogs()
		fmt.Fprintln(os.Stderr, "Error:", err)
		return 1
	}
	logs.FlushLogs()
	return 0
}

func run(args []string) error {
	ctx := context.Background()
	policyFile, args := takeFlag(args, kubeletshim.PolicyFileFlag)

	fs := pflag.NewFlagSet("kubelet", pflag.ContinueOnError)
	fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	flags := options.NewKubeletFlags()
	cfg, err := options.NewKubeletConfiguration()
	if err != nil {
		return err
	}
	flags.AddFlags(fs)
	options.AddKubeletConfigFlags(fs, cfg)
	options.AddGlobalFlags(fs)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("kubelet flags: %w", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unknown command %q", fs.Arg(0))
	}
	verflag.PrintAndExitIfRequested()
	if err := utilfeature.DefaultMutableFeatureGate.SetFromMap(cfg.FeatureGates); err != nil {
		return fmt.Errorf("feature gates from flags: %w", err)
	}
	if err := options.ValidateKubeletFlags(flags); err != nil {
		return fmt.Errorf("kubelet flags: %w", err)
	}
	if flags.KubeletDropinConfigDirectory != "" {
		return errors.New("--config-dir is not supported by evelet kubelet: evelet generates the one --config file")
	}
	if flags.KubeletConfigFile != "" {
		if cfg, err = loadConfig(ctx, flags.KubeletConfigFile); err != nil {
			return err
		}
		// Flags win over the file, as in the stock kubelet.
		if err := reparseConfigFlags(cfg, args); err != nil {
			return err
		}
		if err := utilfeature.DefaultMutableFeatureGate.SetFromMap(cfg.FeatureGates); err != nil {
			return fmt.Errorf("feature gates from the config file: %w", err)
		}
	}

	logs.InitLogs()
	if err := logsapi.ValidateAndApplyAsField(&cfg.Logging, utilfeature.DefaultFeatureGate, field.NewPath("logging")); err != nil {
		return fmt.Errorf("initialize logging: %w", err)
	}
	cliflag.PrintFlags(fs)
	if err := kubeletconfigvalidation.ValidateKubeletConfiguration(cfg, utilfeature.DefaultFeatureGate); err != nil {
		return fmt.Errorf("kubelet configuration: %w", err)
	}

	s := &options.KubeletServer{KubeletFlags: *flags, KubeletConfiguration: *cfg}
	deps, err := app.UnsecuredDependencies(ctx, s, utilfeature.DefaultFeatureGate)
	if err != nil {
		return fmt.Errorf("kubelet dependencies: %w", err)
	}
	if utilfeature.DefaultFeatureGate.Enabled(zpagesfeatures.ComponentFlagz) {
		deps.Flagz = flagz.NamedFlagSetsReader{FlagSets: cliflag.NamedFlagSets{FlagSets: map[string]*pflag.FlagSet{"kubelet": fs}}}
	}
	guard := &VolumeGuard{PolicyFile: policyFile}
	if deps.VolumePlugins, err = guard.Wrap(deps.VolumePlugins); err != nil {
		return err
	}
	deps.DynamicPluginProber = noFlexVolumes{}
	// The kubelet registers its configuration for /configz before it
	// builds the Kubelet, and Options run while it is built.
	deps.Options = append(deps.Options, func(*kubelet.Kubelet) { configz.Delete("kubeletconfig") })

	ctx = genericapiserver.SetupSignalContext()
	utilfeature.DefaultMutableFeatureGate.AddMetrics()
	return app.Run(ctx, s, deps, utilfeature.DefaultFeatureGate)
}

// takeFlag removes --name=value from args and returns the value.
func takeFlag(args []string, name string) (string, []string) {
	var v string
	out := make([]string, 0, len(args))
	for _, a := range args {
		if val, ok := strings.CutPrefix(a, name+"="); ok {
			v = val
			continue
		}
		out = append(out, a)
	}
	return v, out
}

// loadConfig loads the KubeletConfiguration file with the kubelet's own
// loader (defaults applied, relative paths resolved against the file).
func loadConfig(ctx context.Context, name string) (*kubeletconfig.KubeletConfiguration, error) {
	abs, err := filepath.Abs(name)
	if err != nil {
		return nil, err
	}
	loader, err := configfiles.NewFsLoader(&utilfs.DefaultFs{}, abs)
	if err != nil {
		return nil, fmt.Errorf("kubelet config file %s: %w", name, err)
	}
	kc, err := loader.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("kubelet config file %s: %w", name, err)
	}
	// As the stock kubelet: evictionHard has OS-specific defaults, filled
	// in only when the file leaves it out or asks for the merge.
	if kc.EvictionHard == nil {
		kc.EvictionHard = eviction.DefaultEvictionHard
	} else if kc.MergeDefaultEvictionSettings {
		for k, v := range eviction.DefaultEvictionHard {
			if _, ok := kc.EvictionHard[k]; !ok {
				kc.EvictionHard[k] = v
			}
		}
	}
	return kc, nil
}

// reparseConfigFlags applies the command line's config flags over the
// loaded file. Everything else (KubeletFlags, the global flags of klog and
// friends) is parsed into throwaway values: some flags accumulate.
func reparseConfigFlags(kc *kubeletconfig.KubeletConfiguration, args []string) error {
	fs := pflag.NewFlagSet("kubelet", pflag.ContinueOnError)
	fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	fs.SetOutput(io.Discard)
	globals := pflag.NewFlagSet("", pflag.ContinueOnError)
	options.AddGlobalFlags(globals)
	globals.VisitAll(func(f *pflag.Flag) { fs.VarP(cliflag.NoOp{}, f.Name, f.Shorthand, f.Usage) })
	options.NewKubeletFlags().AddFlags(fs)
	fileGates := kc.FeatureGates
	options.AddKubeletConfigFlags(fs, kc)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("kubelet flags over the config file: %w", err)
	}
	for k, v := range fileGates {
		if _, ok := kc.FeatureGates[k]; !ok {
			kc.FeatureGates[k] = v
		}
	}
	return nil
}
