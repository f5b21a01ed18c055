# evelet: an EVE device as a real Kubernetes node.
# make demo   local control plane + simulated device, one node Ready, a pod Running
# make test   unit + end-to-end tests (installs prerequisites, builds what it needs)

GO       ?= go
VERSION  ?= 0.1.0-dev+$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
KUBE_VERSION := $(shell sh hack/kube-version.sh)
KUBE_BIN := $(CURDIR)/_output/kube/$(KUBE_VERSION)
LDFLAGS  := $(shell sh hack/ldflags.sh -X github.com/lf-edge/evelet/version.Version=$(VERSION))
TAGS     := providerless
export EVELET_BIN := $(CURDIR)/bin/evelet
export KUBE_BIN_DIR := $(KUBE_BIN)
# The upstream kubelet of the pinned release, unmodified, for the fleet and
# join benchmarks' comparison (tests/e2e/stocknode_test.go).
export STOCK_KUBELET := $(CURDIR)/_output/kube/stock-kubelet

.PHONY: proto all build image prereqs kube stock-kubelet test test-kvm unit e2e critest fuzz bench demo demo-down demo-bin fmt vet clean

all: build

# evelet (agent, CRI shim, doctor, status) and, beside it, one binary per
# process the agent runs (evelet-kubelet, evelet-kube-proxy, evelet-dns,
# evelet-vmm per VM), so each process loads only its own code
# (docs/architecture.md). The e2e harness finds them next to EVELET_BIN.
ROLES := kubelet kube-proxy dns vmm
# Static binaries (CGO_ENABLED=0): what the EVE service image ships (EVE's
# root file system has no glibc), so the tests run the same builds.
build:
	CGO_ENABLED=0 $(GO) build -tags $(TAGS) -trimpath -ldflags '$(LDFLAGS)' -o bin/evelet ./cmd/evelet
	for r in $(ROLES); do CGO_ENABLED=0 $(GO) build -tags $(TAGS) -trimpath -ldflags '$(LDFLAGS)' -o bin/evelet-$$r ./cmd/evelet-$$r || exit 1; done
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w -X github.com/lf-edge/evelet/version.Version=$(VERSION)' -o bin/evelet-cni ./cmd/evelet-cni
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w -X github.com/lf-edge/evelet/version.Version=$(VERSION)' -o bin/eve-ni ./cmd/eve-ni

# The EVE service image (docs/eve-service.md): amd64 and arm64, OCI layout
# and docker-archives under _output/image. Cross-builds everything static;
# a first run compiles the vendored kubelet for each architecture.
image:
	sh hack/build-image.sh

prereqs:
	sh hack/install-prereqs.sh

kube:
	sh hack/build-kube.sh >/dev/null

stock-kubelet:
	$(GO) build -tags $(TAGS) -trimpath -ldflags '$(shell sh hack/ldflags.sh)' -o _output/kube/stock-kubelet k8s.io/kubernetes/cmd/kubelet

# Unit and package tests with the race detector, without the suites that
# drive the built binaries (hack/test.sh runs those too).
unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -Ev '/tests/(e2e|critest|criconformance)$$')

e2e: prereqs build kube
	$(GO) test -count=1 -timeout 40m -v ./tests/e2e/...

# hack/test.sh: every unit and package test with -race, then the suites
# (tests/e2e, upstream critest against containerd and evelet, the CRI
# conformance comparison) without it; any skip not listed in
# tests/allowed-skips.txt fails the run (tests/cmd/testrun).
# The suite runs next to a demo device (WITH_DEMO) to prove the two coexist.
test: prereqs build kube demo-bin
	$(GO) vet ./...
	$(WITH_DEMO) sh hack/test.sh
	$(MAKE) fuzz

# The KVM path of the VM backend, for a host with /dev/kvm and VMX/SVM (the
# project's CI machines have neither, so `make test` runs VMs under TCG and
# allows only this test's skip). Here a missing KVM is a failure.
test-kvm: prereqs
	EVELET_REQUIRE_KVM=1 $(GO) test -race -count=1 -v -run '^TestVMLifecycleKVM$$' ./cri/vm/

# Upstream CRI conformance alone (docs/conformance.md); the per-endpoint logs
# and the comparison land in _output/critest/.
critest: prereqs build
	$(GO) test -count=1 -timeout 40m -v -run '^TestCritest$$' ./tests/critest/

# Brief fuzzing of the parsers that take input from the EVE side (the seed
# corpora under testdata/fuzz also run in every plain `go test`). A count,
# not a duration, so a loaded CI machine does the same work.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseCheckpoint$$' -fuzztime 20000x ./eve/evecfg/
	$(GO) test -run '^$$' -fuzz '^FuzzParseTokenPayload$$' -fuzztime 20000x ./eve/evecrypt/
	$(GO) test -run '^$$' -fuzz '^FuzzParseNetworks$$' -fuzztime 20000x ./cni/annotation/

bench: prereqs build kube stock-kubelet
	mkdir -p _output
	$(GO) test -run '^$$' -bench . -skip '^Benchmark(Fleet|JoinVsStock)$$' -benchtime 10x -timeout 40m ./tests/e2e/ | grep -E '^(Benchmark|ok|FAIL)' | tee _output/bench.txt
	$(GO) test -run '^$$' -bench '^BenchmarkJoinVsStock$$' -benchtime 10x -timeout 30m ./tests/e2e/ | grep -E '^(Benchmark|ok|FAIL)' | tee -a _output/bench.txt
	$(GO) test -run '^$$' -bench '^BenchmarkFleet$$' -benchtime 1x -timeout 90m ./tests/e2e/ | grep -E '^(Benchmark|ok|FAIL)' | tee -a _output/bench.txt
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 20m ./tests/criconformance/ | grep -E '^(Benchmark|ok|FAIL)' | tee -a _output/bench.txt
	$(GO) test -run '^$$' -bench . ./cri/ | grep -E '^(Benchmark|ok|FAIL)' | tee -a _output/bench.txt
	$(GO) test -run '^$$' -bench . -benchtime 3x -timeout 20m ./cri/vm/ | grep -E '^(Benchmark|ok|FAIL)' | tee -a _output/bench.txt
	$(GO) test -run '^$$' -bench AddDel -benchtime 20x ./cni/meta/ | grep -E '^(Benchmark|ok|FAIL)' | tee -a _output/bench.txt
	$(GO) test -run '^$$' -bench LocalNIAddDel -benchtime 20x ./cni/eveni/ | grep -E '^(Benchmark|ok|FAIL)' | tee -a _output/bench.txt
	$(GO) test -run '^$$' -bench SetupTeardown -benchtime 10x ./cri/vm/vmnet/ | grep -E '^(Benchmark|ok|FAIL)' | tee -a _output/bench.txt
	@ls -l bin/evelet $(ROLES:%=bin/evelet-%) | awk '{printf "binary size: %s %.1f MiB\n", $$9, $$5/1048576}' | tee -a _output/bench.txt

# The demo prints one line per step with the time since `make demo` began
# (EVELET_T0); the long steps of a first run say so and how long they take.
demo: export EVELET_T0 := $(shell date +%s)
demo:
	@sh hack/step.sh "checking prerequisites (containerd, runc, CNI plugins, busybox)"
	@sh hack/install-prereqs.sh
	@GOPROXY=off $(GO) mod download 2>/dev/null || { \
	  sh hack/step.sh "downloading Go modules (first run only: a few minutes)"; $(GO) mod download; }
	@if [ -x bin/evelet ]; then sh hack/step.sh "building bin/evelet"; \
	  else sh hack/step.sh "building bin/evelet (first build compiles the vendored kubelet: about 7 minutes on 2 cores)"; fi
	@$(MAKE) -s --no-print-directory build
	@sh hack/build-kube.sh >/dev/null
	@$(MAKE) -s --no-print-directory demo-bin
	@bin/evelet-demo up

demo-down: demo-bin
	@bin/evelet-demo down

demo-bin:
	@$(GO) build -o bin/evelet-demo ./tests/cmd/demo

# `make test` runs the suite next to a demo (started for it unless one is
# up) and fails if the demo's node or pod did not survive it (issue 12).
WITH_DEMO = bin/evelet-demo with --

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...

clean:
	rm -rf bin _output

proto:
	@command -v protoc >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null; }
	sh hack/proto.sh
