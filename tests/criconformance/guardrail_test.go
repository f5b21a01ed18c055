package criconformance

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/policy"
)

// wantRefused checks for the guardrail's PermissionDenied naming rule and
// the config item that would allow the request.
func wantRefused(t *testing.T, err error, rule string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.PermissionDenied {
		t.Fatalf("got %v, want PermissionDenied from rule %s", err, rule)
	}
	msg := st.Message()
	if !strings.HasPrefix(msg, `evelet guardrail "`+rule+`": `) || strings.Contains(msg, "\n") {
		t.Errorf("message %q does not start with the rule %s or is not one line", msg, rule)
	}
	if !strings.Contains(msg, "evelet.policy.") && !strings.Contains(msg, "no config item") {
		t.Errorf("message %q names no config item", msg)
	}
}

// withPolicy installs the base policy changed by allow until the test ends.
func withPolicy(t *testing.T, allow func(*policy.Policy)) {
	p := env.base.Clone()
	allow(&p)
	env.srv.SetPolicy(p)
	t.Cleanup(func() { env.srv.SetPolicy(env.base) })
}

func TestGuardrailsSandbox(t *testing.T) {
	needEnv(t)
	cases := []struct {
		name  string
		rule  string
		spec  func(*runtimeapi.PodSandboxConfig)
		allow func(*policy.Policy)
	}{
		{"privileged", policy.RulePrivileged,
			func(c *runtimeapi.PodSandboxConfig) { c.Linux.SecurityContext.Privileged = true },
			func(p *policy.Policy) { p.AllowPrivileged = true }},
		{"hostPID", policy.RuleHostPID,
			func(c *runtimeapi.PodSandboxConfig) {
				c.Linux.SecurityContext.NamespaceOptions.Pid = runtimeapi.NamespaceMode_NODE
			},
			func(p *policy.Policy) { p.AllowHostPID = true }},
		{"hostIPC", policy.RuleHostIPC,
			func(c *runtimeapi.PodSandboxConfig) {
				c.Linux.SecurityContext.NamespaceOptions.Ipc = runtimeapi.NamespaceMode_NODE
			},
			func(p *policy.Policy) { p.AllowHostIPC = true }},
		{"hostNetwork", policy.RuleHostNetwork,
			func(c *runtimeapi.PodSandboxConfig) {
				c.Linux.SecurityContext.NamespaceOptions.Network = runtimeapi.NamespaceMode_NODE
				c.Hostname = "" // as the kubelet sends it: the node's own
			},
			func(p *policy.Policy) { p.AllowHostNetwork = true }},
		{"unsafe sysctl", policy.RuleSysctls,
			func(c *runtimeapi.PodSandboxConfig) { c.Linux.Sysctls = map[string]string{"kernel.msgmax": "65536"} },
			func(p *policy.Policy) { p.AllowedUnsafeSysctls = []string{"kernel.msgmax"} }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := newPod(t, "g-"+strings.ToLower(tc.name[:4])).SandboxConfig()
			tc.spec(cfg)
			before := sandboxIDs(t)
			_, err := env.rs.RunPodSandbox(ctx(t), cfg, "")
			wantRefused(t, err, tc.rule)
			if after := sandboxIDs(t); len(after) != len(before) {
				t.Errorf("containerd has %d sandboxes, had %d: the refused pod reached it", len(after), len(before))
			}
			withPolicy(t, tc.allow)
			id := runSandbox(t, cfg)
			if st, err := env.rs.PodSandboxStatus(ctx(t), id, false); err != nil || st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
				t.Errorf("admitted pod not ready: %v %v", st, err)
			}
		})
	}
}

func TestGuardrailsContainer(t *testing.T) {
	needEnv(t)
	r := startSandbox(t, "g-ctr", "main")
	configDir := "/config"
	_, statErr := os.Stat(configDir)
	if errors.Is(statErr, fs.ErrNotExist) {
		// containerd creates a missing host path; leave the host as found.
		t.Cleanup(func() { os.Remove(configDir) })
	}
	_, devErr := os.Stat("/dev/mem")
	subpath := forbiddenSubPath(t, r.Pod)

	cases := []struct {
		name    string
		rule    string
		spec    func(*runtimeapi.ContainerConfig)
		allow   func(*policy.Policy)
		sandbox func(*runtimeapi.PodSandboxConfig) // for the admitted container's pod
		mayFail bool                               // containerd may refuse the admitted spec on this machine
	}{
		{"privileged", policy.RulePrivileged,
			func(c *runtimeapi.ContainerConfig) { c.Linux.SecurityContext.Privileged = true },
			func(p *policy.Policy) { p.AllowPrivileged = true },
			func(c *runtimeapi.PodSandboxConfig) { c.Linux.SecurityContext.Privileged = true }, false},
		// "/" and "/config" hold protected directories: no knob admits
		// them (policy/protected.go); a plain host directory stands in.
		{"hostPath /srv", policy.RuleHostPath, mount("/srv", true),
			func(p *policy.Policy) { p.AllowedHostPaths = []string{"/"} }, nil, false},
		{"hostPath /mnt", policy.RuleHostPath, mount("/mnt", true),
			func(p *policy.Policy) { p.AllowedHostPaths = []string{"/mnt"} }, nil, false},
		{"runtime socket", policy.RuleHostPath, mount(env.ctrd.Socket(), false),
			func(p *policy.Policy) { p.AllowedHostPaths = []string{env.ctrd.Socket()} }, nil, false},
		{"subPath of /srv", policy.RuleHostPath, mount(subpath, true),
			func(p *policy.Policy) { p.AllowedHostPaths = []string{"/srv"} }, nil, false},
		{"CAP_SYS_ADMIN", policy.RuleCapabilities,
			func(c *runtimeapi.ContainerConfig) {
				c.Linux.SecurityContext.Capabilities = &runtimeapi.Capability{AddCapabilities: []string{"CAP_SYS_ADMIN"}}
			},
			func(p *policy.Policy) { p.AllowedCapabilities = []string{"SYS_ADMIN"} }, nil, false},
		{"device /dev/mem", policy.RuleDevices,
			func(c *runtimeapi.ContainerConfig) {
				c.Devices = []*runtimeapi.Device{{ContainerPath: "/dev/mem", HostPath: "/dev/mem", Permissions: "r"}}
			},
			func(p *policy.Policy) { p.AllowedDevices = []string{"/dev/mem"} }, nil, devErr != nil},
		{"unmasked proc", policy.RuleUnmaskedProc,
			func(c *runtimeapi.ContainerConfig) {
				c.Linux.SecurityContext.MaskedPaths, c.Linux.SecurityContext.ReadonlyPaths = nil, nil
			},
			func(p *policy.Policy) { p.AllowUnmaskedProc = true }, nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := r.Container("main", "sleep", "3600")
			tc.spec(cfg)
			before := containerIDs(t)
			_, err := env.rs.CreateContainer(ctx(t), r.id, cfg, r.cfg)
			wantRefused(t, err, tc.rule)
			if after := containerIDs(t); len(after) != len(before) {
				t.Errorf("containerd has %d containers, had %d: the refused one reached it", len(after), len(before))
			}

			withPolicy(t, tc.allow)
			pod := r
			if tc.sandbox != nil {
				pod = running{Pod: newPod(t, "g-adm", "main")}
				pod.cfg = pod.SandboxConfig()
				tc.sandbox(pod.cfg)
				pod.id = runSandbox(t, pod.cfg)
				cfg.Mounts = pod.Container("main").Mounts
			}
			id, err := env.rs.CreateContainer(ctx(t), pod.id, cfg, pod.cfg)
			switch {
			case err == nil:
				if err := env.rs.RemoveContainer(ctx(t), id); err != nil {
					t.Errorf("RemoveContainer: %v", err)
				}
			case tc.mayFail && status.Code(err) != codes.PermissionDenied:
				t.Logf("admitted by evelet, refused by containerd on this machine: %v", err)
			default:
				t.Errorf("not admitted with the knob: %v", err)
			}
		})
	}
}

func mount(hostPath string, readonly bool) func(*runtimeapi.ContainerConfig) {
	return func(c *runtimeapi.ContainerConfig) {
		c.Mounts = append(c.Mounts, &runtimeapi.Mount{ContainerPath: "/host", HostPath: hostPath, Readonly: readonly})
	}
}

// forbiddenSubPath does what the kubelet does for a hostPath volume "/"
// mounted with subPath "srv": it bind-mounts /srv into the pod's directory
// (not /etc: /etc holds the CNI configuration, which no knob may hand out),
// and CreateContainer then names only that pod directory.
func forbiddenSubPath(t *testing.T, p Pod) string {
	t.Helper()
	target := filepath.Join(p.Dir(), "volume-subpaths", "host", "main", "0")
	bindMount(t, "/srv", target)
	return target
}

func bindMount(t *testing.T, src, target string) {
	t.Helper()
	if err := os.MkdirAll(target, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(src, target, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount %s on %s: %v", src, target, err)
	}
	t.Cleanup(func() { syscall.Unmount(target, syscall.MNT_DETACH) })
}

// TestKubeletMountsAdmitted runs a container with every kind of mount the
// kubelet makes from its pod directory, under the default policy.
func TestKubeletMountsAdmitted(t *testing.T) {
	needEnv(t)
	r := startSandbox(t, "kmounts", "main")
	vol := filepath.Join(r.Dir(), "volumes")
	emptyDir := filepath.Join(vol, "kubernetes.io~empty-dir", "data")
	if err := os.MkdirAll(filepath.Join(emptyDir, "sub"), 0o777); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(emptyDir, "sub", "file"), []byte("from-subpath\n"), 0o644)
	// A projected service account token: a tmpfs of its own.
	token := filepath.Join(vol, "kubernetes.io~projected", "kube-api-access")
	os.MkdirAll(token, 0o750)
	if err := syscall.Mount("tmpfs", token, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(token, syscall.MNT_DETACH) })
	os.WriteFile(filepath.Join(token, "token"), []byte("secret-token\n"), 0o644)
	// subPath mounts of the emptyDir and of the token volume.
	sub := filepath.Join(r.Dir(), "volume-subpaths", "data", "main", "0")
	bindMount(t, filepath.Join(emptyDir, "sub"), sub)
	tokenSub := filepath.Join(r.Dir(), "volume-subpaths", "kube-api-access", "main", "1")
	os.MkdirAll(filepath.Dir(tokenSub), 0o750)
	os.WriteFile(tokenSub, nil, 0o644)
	if err := syscall.Mount(filepath.Join(token, "token"), tokenSub, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(tokenSub, syscall.MNT_DETACH) })

	cfg := r.Container("main", "sleep", "3600")
	cfg.Mounts = append(cfg.Mounts,
		&runtimeapi.Mount{ContainerPath: "/data", HostPath: emptyDir},
		&runtimeapi.Mount{ContainerPath: "/var/run/secrets/kubernetes.io/serviceaccount", HostPath: token, Readonly: true},
		&runtimeapi.Mount{ContainerPath: "/sub", HostPath: sub},
		&runtimeapi.Mount{ContainerPath: "/token", HostPath: tokenSub, Readonly: true},
	)
	id := r.create(t, cfg)
	if err := env.rs.StartContainer(ctx(t), id); err != nil {
		t.Fatal(err)
	}
	waitContainer(t, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
	out, _, err := env.rs.ExecSync(ctx(t), id, []string{"cat", "/data/sub/file", "/sub/file",
		"/var/run/secrets/kubernetes.io/serviceaccount/token", "/token", "/etc/hosts"}, 10*time.Second)
	want := []string{"from-subpath", "from-subpath", "secret-token", "secret-token", r.Name}
	for _, w := range want {
		if !strings.Contains(string(out), w) {
			t.Errorf("container sees %q, lacks %q (%v)", out, w, err)
		}
	}
	// Another pod's directory is out of reach.
	other := startSandbox(t, "kmounts-other", "main")
	cfg = other.Container("main", "sleep", "3600")
	cfg.Mounts = append(cfg.Mounts, &runtimeapi.Mount{ContainerPath: "/stolen", HostPath: token})
	_, err = env.rs.CreateContainer(ctx(t), other.id, cfg, other.cfg)
	wantRefused(t, err, policy.RuleHostPath)
}

func TestGuardrailMetrics(t *testing.T) {
	needEnv(t)
	before := rejectionCount(t, policy.RuleHostNetwork)
	cfg := newPod(t, "g-metric").SandboxConfig()
	cfg.Linux.SecurityContext.NamespaceOptions.Network = runtimeapi.NamespaceMode_NODE
	_, err := env.rs.RunPodSandbox(ctx(t), cfg, "")
	wantRefused(t, err, policy.RuleHostNetwork)
	if after := rejectionCount(t, policy.RuleHostNetwork); after != before+1 {
		t.Errorf("evelet_cri_policy_rejections_total{rule=%q}: %v -> %v", policy.RuleHostNetwork, before, after)
	}
	n, err := testutil.GatherAndCount(env.reg, "evelet_cri_requests_total", "evelet_cri_request_duration_seconds")
	if err != nil || n == 0 {
		t.Errorf("no request metrics: %d, %v", n, err)
	}
}

// rejectionCount reads evelet_cri_policy_rejections_total{rule}.
func rejectionCount(t *testing.T, rule string) float64 {
	t.Helper()
	mfs, err := env.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "evelet_cri_policy_rejections_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "rule" && l.GetValue() == rule {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no rejection counter for %s", rule)
	return 0
}
