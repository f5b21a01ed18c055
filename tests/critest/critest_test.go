package critest

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/apimachinery/pkg/util/wait"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri"
	crictrd "github.com/lf-edge/evelet/cri/containerd"
	crivm "github.com/lf-edge/evelet/cri/vm"
	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/policy"
	"github.com/lf-edge/evelet/tests/containerd"
	"github.com/lf-edge/evelet/tests/controlplane"
)

// criToolsVersion is the critest release built from tool/go.mod.
const criToolsVersion = "v1.37.0"

// guardrailDifferences are the specs that pass (or skip, for a feature
// containerd 1.6 lacks) against containerd and are refused through evelet
// by the device's policy: spec name (a regexp) -> the rule whose refusal
// must be in the spec's failure message.
var guardrailDifferences = map[string]string{
	`Container Mount Propagation runtime should support mount propagation mount with 'r(private|shared|slave)'`:                                                      policy.RulePrivileged,
	`Container Mount Readonly runtime should support readonly mounts`:                                                                                                policy.RulePrivileged,
	`Container OOM runtime should output OOMKilled reason`:                                                                                                           policy.RulePrivileged,
	`should support starting container with volume( when host path is a symlink)? \[Conformance\]`:                                                                   policy.RuleHostPath,
	`PodSandbox runtime should support sysctls should support unsafe sysctls`:                                                                                        policy.RuleSysctls,
	`NamespaceOption runtime should support HostNetwork is true`:                                                                                                     policy.RuleHostNetwork,
	`NamespaceOption runtime should support HostPID$`:                                                                                                                policy.RuleHostPID,
	`SeccompProfilePath runtime should ignore a seccomp profile that blocks setting hostname when privileged`:                                                        policy.RulePrivileged,
	`SeccompProfilePath runtime should (not block setting host name with unconfined seccomp|support an seccomp profile that blocks setting hostname) with SYS_ADMIN`: policy.RuleCapabilities,
	`SeccompProfilePath runtime should not block setting host name with unconfined seccomp and SYS_ADMIN`:                                                            policy.RuleCapabilities,
	`Security Context bucket runtime should support Privileged is true`:                                                                                              policy.RulePrivileged,
	`Security Context bucket runtime should support adding (ALL capabilities|capability)$`:                                                                           policy.RuleCapabilities,
	`Networking runtime should support networking runtime should support port mapping with host port and container port`:                                             policy.RuleHostPorts,
	`SeccompProfilePath should support seccomp unconfined on the container`:                                                                                          policy.RuleSeccomp,
	`Streaming runtime should support streaming interfaces runtime should support portforward in host network`:                                                       policy.RuleHostNetwork,
	// containerd 1.6 has no image volumes (critest skips them there); the
	// shim refuses them by name instead of containerd's `mkdir ""`.
	`Image Volume \[Feature:ImageVolume\] `: policy.RuleImageVolumes,
}

// shimFixes are specs that fail against containerd 1.6 and pass through
// evelet because the shim fixes the difference: spec name -> why.
var shimFixes = map[string]string{
	`Idempotence StopContainer should not return an error if not found`:  "containerd 1.6.20 answers NotFound; the shim answers success (cri/runtime.go idempotent)",
	`Idempotence StopPodSandbox should not return an error if not found`: "containerd 1.6.20 answers NotFound; the shim answers success (cri/runtime.go idempotent)",
}

// offline are specs that cannot pass on this machine against either
// endpoint, and why. They are reported, not compared.
var offline = map[string]string{
	`public image with digest`:                                   "pulls gcr.io/k8s-staging-cri-tools/test-image-digest@sha256:9700f9a2...: only upstream's exact bytes have that digest",
	`execSync with timeout`:                                      "checks with pgrep, which Debian's busybox-static lacks",
	`NamespaceOption runtime should support ContainerPID`:        "checks with pgrep, which Debian's busybox-static lacks",
	`NamespaceOption runtime should support HostIpc`:             "checks with ipcs, which Debian's busybox-static lacks",
	`Security Context bucket runtime should support MaskedPaths`: "Debian's busybox sh runs ls as a built-in, so a masked /bin/ls is not seen",
}

func skipReason() string {
	if os.Geteuid() != 0 {
		return "needs root to run containerd, runc and CNI"
	}
	for _, b := range []string{"containerd", "ctr", "containerd-shim-runc-v2", "runc"} {
		if _, err := exec.LookPath(b); err != nil {
			if _, err2 := os.Stat(filepath.Join("/usr/sbin", b)); err2 != nil {
				return fmt.Sprintf("needs %s (apt-get install containerd runc)", b)
			}
		}
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		return "needs the CNI plugins in /usr/lib/cni (apt-get install containernetworking-plugins)"
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		return "needs a static busybox at /bin/busybox (apt-get install busybox-static)"
	}
	return ""
}

func goBinary() string {
	g := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(g); err != nil {
		return "go"
	}
	return g
}

// buildCritest builds upstream's critest from tool/ (its own module).
func buildCritest(ctx context.Context, t *testing.T, out string) {
	t.Helper()
	tool, err := filepath.Abs("tool")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, goBinary(), "test", "-c", "-o", out, "sigs.k8s.io/cri-tools/cmd/critest")
	cmd.Dir = tool
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building critest %s: %v\n%s", criToolsVersion, err, b)
	}
}

// TestCritest runs critest against containerd and against evelet, and
// compares.
func TestCritest(t *testing.T) {
	if why := skipReason(); why != "" {
		t.Skip(why)
	}
	if testing.Short() {
		t.Skip("critest takes minutes; not in -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	root, err := controlplane.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(root, "_output", "critest")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "evelet-critest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	t0 := time.Now()
	critest := filepath.Join(dir, "critest")
	buildCritest(ctx, t, critest)
	nnp, err := buildNNP(ctx, goBinary(), dir)
	if err != nil {
		t.Fatal(err)
	}
	pauseTar, err := images.BuildPause(ctx, goBinary(), "", filepath.Join(dir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	fs, err := newRootfs("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := buildImages(ctx, fs, pauseTar, nnp)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := StartRegistry()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	for ref, img := range imgs {
		if err := reg.Push(ref, img); err != nil {
			t.Fatal(err)
		}
	}
	mirrors := map[string]string{}
	for _, h := range Mirrored {
		mirrors[h] = reg.URL()
	}
	ctrd, err := containerd.Start(ctx, containerd.Options{
		Dir: filepath.Join(dir, "containerd"), PodCIDR: "10.245.47.0/24", BridgeName: "evcritest0",
		// Pulled from the mirror like every other image: critest removes
		// images by ID, and the pause image has the same ID under every name.
		SandboxImage:        "registry.k8s.io/pause:3.9",
		RestrictOOMScoreAdj: true, // test machines lack CAP_SYS_RESOURCE
		RegistryMirrors:     mirrors,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ctrd.Stop(); err != nil {
			t.Errorf("stopping containerd: %v", err)
		}
	})
	sock, pol := startShim(ctx, t, ctrd, dir, filepath.Join(out, "evelet-shim.log"), false)
	t.Logf("critest %s, images, containerd and evelet ready in %v", criToolsVersion, time.Since(t0).Round(time.Second))

	run := func(name, endpoint string, focus ...string) map[string]Result {
		t.Helper()
		report := filepath.Join(dir, name+".json")
		logPath := filepath.Join(out, name+".log")
		args := []string{"-runtime-endpoint=" + endpoint, "-image-endpoint=" + endpoint,
			"-ginkgo.json-report=" + report, "-ginkgo.no-color"}
		var q []string
		for _, f := range focus {
			if strings.HasPrefix(f, "-") {
				args = append(args, f) // a critest flag, not a spec
				continue
			}
			q = append(q, regexp.QuoteMeta(f))
		}
		if len(q) > 0 {
			args = append(args, "-ginkgo.focus="+strings.Join(q, "|"))
		}
		lf, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		defer lf.Close()
		start := time.Now()
		cmd := exec.CommandContext(ctx, critest, args...)
		cmd.Dir = dir
		cmd.Stdout, cmd.Stderr = lf, lf
		runErr := cmd.Run() // non-zero when any spec fails; the report says which
		rs, err := ReadReport(report)
		if err != nil {
			t.Fatalf("critest against %s: %v (exit: %v; log %s)", name, err, runErr, logPath)
		}
		t.Logf("critest against %s: %v in %v (log %s)", name, Count(rs), time.Since(start).Round(time.Second), logPath)
		return rs
	}
	direct := run("containerd", ctrd.Endpoint())
	shim := run("evelet", "unix://"+sock)

	// A spec that flaked in one run shows up as a difference: run the
	// unexplained ones again, against both, and keep the second verdicts.
	if again := compare(direct, shim).unexplained; len(again) > 0 {
		t.Logf("running %d differing specs again against both endpoints", len(again))
		d2 := run("containerd-again", ctrd.Endpoint(), again...)
		s2 := run("evelet-again", "unix://"+sock, again...)
		for _, n := range again {
			if r, ok := d2[n]; ok && r.State != "skipped" {
				direct[n] = r
			}
			if r, ok := s2[n]; ok && r.State != "skipped" {
				shim[n] = r
			}
		}
	}
	c := compare(direct, shim)
	for _, e := range c.errors {
		t.Error(e)
	}
	summary := c.report

	// The eve-vm handler: every pod critest makes goes to the VM backend
	// (cri/vm). critest's images are containers, not containerDisks, so
	// most container specs fail at CreateContainer by design ("has no VM
	// disk"); the counts are recorded (docs/conformance.md), and the run
	// checks the backend answers every spec without hanging or crashing.
	vmSock, _ := startShim(ctx, t, ctrd, filepath.Join(dir, "vmshim"), filepath.Join(out, "evelet-vm-shim.log"), true)
	vmRes := run("evelet-eve-vm", "unix://"+vmSock, "-runtime-handler="+crivm.Handler)
	summary += fmt.Sprintf("\nthrough evelet, RuntimeClass handler %s: %v\n", crivm.Handler, Count(vmRes))
	summary = fmt.Sprintf("critest %s; containerd %s; evelet policy %+v\n\n", criToolsVersion, ctrdVersion(ctx), pol) + summary
	if err := os.WriteFile(filepath.Join(out, "summary.txt"), []byte(summary), 0o644); err != nil {
		t.Error(err)
	}
	t.Log("\n" + summary)
}

// startShim serves evelet's CRI in front of ctrd with the policy a device
// has: policy.Default() at this test's kubelet directories, with one
// relaxation: critest sends containers without the masked and read-only
// /proc paths the kubelet always sends, so no-unmasked-proc would refuse
// every container it makes. That rule is covered by the guardrail tests.
func startShim(ctx context.Context, t *testing.T, ctrd *containerd.Containerd, dir, logPath string, withVM bool) (string, policy.Policy) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	backend, err := crictrd.Dial(ctx, ctrd.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	pol := policy.Default()
	pol.KubeletRootDir, pol.PodLogsDir = filepath.Join(dir, "kubelet"), filepath.Join(dir, "pod-logs")
	pol.AllowUnmaskedProc = true
	l := logrus.New()
	l.SetOutput(io.Discard)
	if lf, err := os.Create(logPath); err == nil {
		l.SetOutput(lf)
		t.Cleanup(func() { lf.Close() })
	}
	sock := filepath.Join(dir, "evelet.sock")
	cfg := cri.Config{Socket: sock, Backend: backend, Log: logrus.NewEntry(l), Policy: &pol}
	if withVM {
		cfg.Handlers = map[string]cri.Backend{crivm.Handler: vmBackend(t, ctrd, backend, dir, logrus.NewEntry(l))}
	}
	srv, err := cri.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx) }()
	t.Cleanup(func() {
		scancel()
		if err := <-served; err != nil {
			t.Errorf("evelet CRI: %v", err)
		}
	})
	// Serve listens asynchronously: wait for the socket, or for Serve to fail.
	err = wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		select {
		case err := <-served:
			return false, fmt.Errorf("evelet CRI stopped: %v", err)
		default:
		}
		_, err := os.Stat(sock)
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("evelet CRI socket %s: %v", sock, err)
	}
	return sock, pol
}

// vmBackend is the VM backend as the agent makes it, without pod
// networking (loopback-only netns) and with emulation allowed: this host
// has no usable KVM, so any VM would run under QEMU's TCG.
func vmBackend(t *testing.T, ctrd *containerd.Containerd, images runtimeapi.ImageServiceClient, dir string, log *logrus.Entry) cri.Backend {
	t.Helper()
	bin := os.Getenv("EVELET_BIN")
	if bin == "" {
		t.Fatal("EVELET_BIN is not set: the eve-vm run needs the evelet binary for its VM supervisor (make sets it)")
	}
	t.Log("the eve-vm run has no /dev/kvm here: any VM would run under QEMU's software emulation (TCG)")
	b, err := crivm.New(crivm.Config{StateDir: filepath.Join(dir, "vm"), ContainerdSocket: ctrd.Socket(), Images: images,
		NetnsDir: filepath.Join(dir, "netns"), Supervisor: []string{bin, "vmm"}, KVMDevice: "/nonexistent/kvm",
		AllowEmulation: func() bool { return true }, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	// critest leaves the sandboxes of some failed specs: remove them, so
	// that no netns, VM or cgroup outlives the test.
	t.Cleanup(func() {
		ctx := context.Background()
		l, err := b.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		if err != nil {
			t.Errorf("listing the eve-vm run's sandboxes: %v", err)
			return
		}
		for _, sb := range l.GetItems() {
			if _, err := b.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.GetId()}); err != nil {
				t.Errorf("removing sandbox %s left by critest: %v", sb.GetId(), err)
			}
		}
	})
	return b
}

func ctrdVersion(ctx context.Context) string {
	b, err := exec.CommandContext(ctx, "containerd", "--version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

var guardrailMsg = regexp.MustCompile(`evelet guardrail "([a-z-]+)"`)

type comparison struct {
	report      string
	errors      []string // differences nothing explains
	unexplained []string // their spec names
}

// compare classifies every difference between the runs.
func compare(direct, shim map[string]Result) comparison {
	var c comparison
	var b strings.Builder
	fmt.Fprintf(&b, "containerd directly: %v\nthrough evelet:      %v\n", Count(direct), Count(shim))
	match := func(table map[string]string, spec string) (string, bool) {
		for re, why := range table {
			if regexp.MustCompile(re).MatchString(spec) {
				return why, true
			}
		}
		return "", false
	}
	fail := func(name, format string, args ...any) {
		c.errors = append(c.errors, fmt.Sprintf(format, args...))
		c.unexplained = append(c.unexplained, name)
	}
	var diffs, fixes, common []string
	for _, name := range Names(direct) {
		d := direct[name]
		s, ok := shim[name]
		if !ok {
			c.errors = append(c.errors, "spec ran against containerd only: "+name)
			continue
		}
		switch {
		// Passed against containerd (or skipped there because containerd 1.6
		// lacks the feature) and neither through evelet.
		case (d.passed() || d.State == "skipped") && !s.passed() && s.State != d.State:
			rule, listed := match(guardrailDifferences, name)
			got := ""
			if m := guardrailMsg.FindStringSubmatch(s.Message); m != nil {
				got = m[1]
			}
			switch {
			case !listed:
				fail(name, "%s against containerd, %s through evelet (guardrail %q): %s\n%s", d.State, s.State, got, name, firstLine(s.Message))
			case got != rule:
				fail(name, "listed as refused by %q, but through evelet it %s with: %s\n%s", rule, s.State, name, firstLine(s.Message))
			}
			diffs = append(diffs, fmt.Sprintf("- %s: refused by `%s`", name, got))
		case !d.passed() && s.passed() && d.State != "skipped":
			why, listed := match(shimFixes, name)
			if !listed {
				fail(name, "fails against containerd, passes through evelet, and no fix in the shim explains it: %s\n%s", name, firstLine(d.Message))
			}
			fixes = append(fixes, fmt.Sprintf("- %s: %s", name, why))
		case !d.passed() && d.State != "skipped":
			why, _ := match(offline, name)
			common = append(common, fmt.Sprintf("- %s [%s/%s] (%s): %s", name, d.State, s.State, why, firstLine(d.Message)))
		}
	}
	section := func(title string, lines []string) {
		fmt.Fprintf(&b, "\n%s (%d):\n%s\n", title, len(lines), strings.Join(lines, "\n"))
	}
	section("refused through evelet by a guardrail", diffs)
	section("fixed in the shim (fail against containerd 1.6)", fixes)
	section("fail against both", common)
	c.report = b.String()
	return c
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}
