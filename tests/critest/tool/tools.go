//go:build tools

// Package tool pins upstream's CRI conformance suite, critest, in a module
// of its own. cri-tools v1.37.0 needs k8s.io/* v0.37 and a newer grpc and
// OpenTelemetry than the vendored kubelet v1.35.4; requiring it from the main
// module would move those for the kubelet too. critest is a test binary
// (cmd/critest has only _test.go files), so tests/critest builds it with
// `go test -c sigs.k8s.io/cri-tools/cmd/critest` in this directory; this
// blank import keeps its dependencies in go.mod for `go mod tidy`.
package tool

import _ "sigs.k8s.io/cri-tools/pkg/validate"
