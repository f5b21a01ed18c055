// Command eve-ni is the CNI plugin that attaches a pod interface to an EVE
// network instance (package cni/eveni). evelet-cni runs it as a delegate
// for NetworkAttachmentDefinitions of type "eve-ni".
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/lf-edge/evelet/cni/eveni"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add: func(args *skel.CmdArgs) error {
			res, conf, err := eveni.Add(args)
			if err != nil {
				return err
			}
			return types.PrintResult(res, conf.CNIVersion)
		},
		Del:    eveni.Del,
		Check:  eveni.Check,
		Status: eveni.Status,
		GC:     eveni.GC,
	}, version.PluginSupports("0.4.0", "1.0.0", "1.1.0"), "eve-ni: attaches pods to EVE network instances")
}
