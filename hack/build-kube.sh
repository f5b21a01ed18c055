#!/bin/sh
# Builds the control-plane binaries the e2e tests and the demo use, from the
# same k8s.io/kubernetes module as the vendored kubelet, into a directory keyed
# by that version. A warm run finds them there and builds nothing.
set -eu
cd "$(dirname "$0")/.."
v=$(sh hack/kube-version.sh)
out=${KUBE_BIN_DIR:-_output/kube/$v}
mkdir -p "$out"
need=""
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl etcd; do
  [ -x "$out/$b" ] || need="$need $b"
done
[ -z "$need" ] && { echo "$out"; exit 0; }
pkgs=""
for b in $need; do
  case $b in
    etcd) pkgs="$pkgs ./tests/cmd/etcd" ;;
    *) pkgs="$pkgs k8s.io/kubernetes/cmd/$b" ;;
  esac
done
sh hack/step.sh "building the Kubernetes binaries$need into $out (first run only: about 15 minutes on 2 cores)" >&2
tmp=$(mktemp -d "$out/.build.XXXX")
go build -tags providerless -trimpath -ldflags "$(sh hack/ldflags.sh)" -o "$tmp/" $pkgs >&2
for b in $need; do mv "$tmp/$b" "$out/$b"; done
rmdir "$tmp"
echo "$out"
