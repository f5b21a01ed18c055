// Package critest runs upstream's CRI conformance suite (critest, from
// sigs.k8s.io/cri-tools) against containerd's CRI socket and against
// evelet's CRI shim in front of the same containerd, and compares the two
// runs spec by spec. Every difference must be a guardrail refusing what the
// spec asks for (the table in critest_test.go, checked against the refusal
// message) or a fix in the shim; docs/conformance.md records the counts.
//
// critest pulls its images by their upstream names; they are built here
// from the static busybox and served by a registry on loopback that the
// test containerd uses as a mirror of registry.k8s.io, gcr.io and
// k8s.gcr.io. Nothing leaves the machine.
package critest
