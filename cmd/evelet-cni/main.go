// evelet-cni is the multi-network meta plugin (cni/meta) as a CNI plugin
// binary. It stays small: no kubelet, no typed Kubernetes API.
package main

import (
	"errors"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/sirupsen/logrus"

	"github.com/lf-edge/evelet/cni/meta"
	evversion "github.com/lf-edge/evelet/version"
)

func main() {
	// stdout carries the CNI result: logs go to stderr, which the runtime
	// shows with a failure.
	l := logrus.New()
	l.SetOutput(os.Stderr)
	l.SetLevel(logrus.WarnLevel)
	p := &meta.Plugin{Log: logrus.NewEntry(l).WithField("plugin", meta.PluginType), Clients: meta.KubeClients}
	skel.PluginMainFuncs(skel.CNIFuncs{Add: flat(p.Add), Del: flat(p.Del), Check: flat(p.Check), Status: flat(p.Status), GC: flat(p.GC)},
		version.All, "evelet-cni "+evversion.String())
}

// flat keeps evelet-cni's context in the message the runtime shows: skel
// would otherwise unwrap to a delegate's *types.Error and print only its
// text, losing which network and interface failed. The delegate's error
// code is kept.
func flat(f func(*skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(a *skel.CmdArgs) error {
		err := f(a)
		if err == nil {
			return nil
		}
		code := uint(types.ErrInternal)
		var te *types.Error
		if errors.As(err, &te) {
			code = te.Code
		}
		return &types.Error{Code: code, Msg: err.Error()}
	}
}
