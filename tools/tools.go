//go:build tools

// Package tools pins the commands that the tests and the demo build from the
// same k8s.io/kubernetes module as the vendored kubelet, so `go mod tidy`
// keeps them and every binary in a run comes from one dependency graph.
package tools

import (
	_ "go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
