// evelet-cni is the multi-network meta plugin (cni/meta) as a CNI plugin
// binary. It stays small: no kubelet, no typed Kubernetes API.
package main

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"
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
	skel.PluginMainFuncs(skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status, GC: p.GC},
		version.All, "evelet-cni "+evversion.String())
}
