// Command etcd is etcd's own server entry point, built from the etcd version
// that k8s.io/kubernetes v1.35 depends on, so the e2e control plane needs no
// Debian package (Debian's etcd 3.4 is too old for kube-apiserver 1.35).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
