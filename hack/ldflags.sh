#!/bin/sh
# Prints the -ldflags that stamp Kubernetes' version variables, so every
# binary built from the k8s.io/kubernetes module (the vendored kubelet
# included) reports the pinned release instead of v0.0.0-master.
set -eu
v=$(sh "$(dirname "$0")/kube-version.sh")
major=$(echo "$v" | sed -E 's/^v([0-9]+)\..*/\1/')
minor=$(echo "$v" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')
flags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  flags="$flags -X $p.gitVersion=$v -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
echo "-s -w$flags $*"
