#!/bin/sh
# Builds evelet's EVE service image (make image; docs/eve-service.md) for
# ARCHES (default: amd64 arm64) into OUT (default: _output/image): static
# (CGO_ENABLED=0) binaries of every main package under ./cmd, the CNI
# plugins pods use (containernetworking/plugins at the version go.mod
# pins, built in their own module with `go install pkg@version`, so our
# go.mod does not carry their dependencies), and pause; then
# images.WriteService writes the OCI layout (every architecture) and one
# docker-archive per architecture. No Docker engine; same inputs, same digest.
set -eu
GO=${GO:-go}
OUT=${OUT:-_output/image}
ARCHES=${ARCHES:-"amd64 arm64"}
VERSION=${VERSION:-0.1.0-dev+$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
REF=${REF:-docker.io/lfedge/evelet:$(echo "$VERSION" | tr '+' '-')}
LDFLAGS=$(sh "$(dirname "$0")/ldflags.sh" -X github.com/lf-edge/evelet/version.Version="$VERSION")
cniv=$($GO list -m -f '{{.Version}}' github.com/containernetworking/plugins)
plugins="main/bridge main/loopback ipam/host-local ipam/static ipam/dhcp meta/portmap meta/bandwidth"
gopath=$(mktemp -d)
trap 'chmod -R u+w "$gopath"; rm -rf "$gopath"' EXIT
args=""
for arch in $ARCHES; do
  d="$OUT/build/$arch"
  rm -rf "$d"
  mkdir -p "$d/bin" "$d/cni"
  for pkg in $($GO list ./cmd/...); do
    CGO_ENABLED=0 GOOS=linux GOARCH=$arch $GO build -tags providerless -trimpath -buildvcs=false \
      -ldflags "$LDFLAGS" -o "$d/bin/$(basename "$pkg")" "$pkg"
  done
  # shellcheck disable=SC2046
  GOPATH=$gopath GOMODCACHE=$($GO env GOMODCACHE) GOFLAGS= CGO_ENABLED=0 GOOS=linux GOARCH=$arch \
    $GO install -trimpath -ldflags '-s -w' $(for p in $plugins; do printf 'github.com/containernetworking/plugins/plugins/%s@%s ' "$p" "$cniv"; done)
  if [ -d "$gopath/bin/linux_$arch" ]; then src="$gopath/bin/linux_$arch"; else src="$gopath/bin"; fi
  for p in $plugins; do cp "$src/$(basename "$p")" "$d/cni/"; done
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch $GO build -trimpath -buildvcs=false -ldflags '-s -w' -o "$d/pause" ./images/pause
  args="$args $arch=$d"
done
# shellcheck disable=SC2086
$GO run ./images/cmd/service-image -ref "$REF" -out "$OUT" $args
