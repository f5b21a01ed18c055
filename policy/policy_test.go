package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestFromConfigItemsDefaults(t *testing.T) {
	p, errs := FromConfigItems(nil)
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	if p.AllowPrivileged || p.AllowHostPID || p.AllowHostIPC || p.AllowHostNetwork || p.AllowUnmaskedProc ||
		p.AllowUnconfinedSeccomp || p.AllowedHostPorts != nil || p.AllowedHostPaths != nil || p.AllowedCapabilities != nil || p.AllowedDevices != nil || p.AllowedUnsafeSysctls != nil {
		t.Errorf("defaults allow something: %+v", p)
	}
	if p.KubeletRootDir != DefaultKubeletRootDir || p.PodLogsDir != DefaultPodLogsDir {
		t.Errorf("default dirs: %+v", p)
	}
}

func TestFromConfigItemsAllKeys(t *testing.T) {
	p, errs := FromConfigItems(map[string]string{
		KeyAllowPrivileged:        "true",
		KeyAllowHostPID:           "1",
		KeyAllowHostIPC:           "TRUE",
		KeyAllowHostNetwork:       " true ",
		KeyAllowUnmaskedProc:      "t",
		KeyAllowUnconfinedSeccomp: "true",
		KeyAllowVMEmulation:       "true",
		KeyVMOverlayMaxSize:       "2Gi",
		KeyAllowedHostPorts:       "8080, 30000 - 30100,443-443",
		KeyAllowedHostPaths:       "/data, /mnt/usb/,",
		KeyAllowedCapabilities:    "net_admin,CAP_SYS_TIME",
		KeyAllowedDevices:         "/dev/ttyUSB*, nvidia.com/gpu=0",
		KeyAllowedUnsafeSysctls:   "kernel.msgmax,net.core.*,net/ipv4/ip_forward",
		"evelet.log-level":        "debug", // another part of evelet's
		"timer.config.interval":   "60",    // EVE's own
	})
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	want := Policy{
		AllowPrivileged: true, AllowHostPID: true, AllowHostIPC: true, AllowHostNetwork: true, AllowUnmaskedProc: true,
		AllowUnconfinedSeccomp: true, AllowVMEmulation: true, VMOverlayMaxSize: 2 << 30, AllowedHostPorts: []string{"8080", "30000-30100", "443"},
		KubeletRootDir: DefaultKubeletRootDir, PodLogsDir: DefaultPodLogsDir,
		AllowedHostPaths:     []string{"/data", "/mnt/usb"},
		AllowedCapabilities:  []string{"NET_ADMIN", "SYS_TIME"},
		AllowedDevices:       []string{"/dev/ttyUSB*", "nvidia.com/gpu=0"},
		AllowedUnsafeSysctls: []string{"kernel.msgmax", "net.core.*", "net.ipv4.ip_forward"},
	}
	if !equalPolicy(p, want) {
		t.Errorf("got  %+v\nwant %+v", p, want)
	}
}

func equalPolicy(a, b Policy) bool {
	eq := func(x, y []string) bool { return strings.Join(x, "|") == strings.Join(y, "|") }
	return a.AllowPrivileged == b.AllowPrivileged && a.AllowHostPID == b.AllowHostPID &&
		a.AllowHostIPC == b.AllowHostIPC && a.AllowHostNetwork == b.AllowHostNetwork &&
		a.AllowUnmaskedProc == b.AllowUnmaskedProc && a.AllowUnconfinedSeccomp == b.AllowUnconfinedSeccomp && a.AllowVMEmulation == b.AllowVMEmulation && a.VMOverlayMaxSize == b.VMOverlayMaxSize &&
		eq(a.AllowedHostPorts, b.AllowedHostPorts) && a.KubeletRootDir == b.KubeletRootDir &&
		a.PodLogsDir == b.PodLogsDir && eq(a.AllowedHostPaths, b.AllowedHostPaths) &&
		eq(a.AllowedCapabilities, b.AllowedCapabilities) && eq(a.AllowedDevices, b.AllowedDevices) &&
		eq(a.AllowedUnsafeSysctls, b.AllowedUnsafeSysctls)
}

func TestFromConfigItemsErrors(t *testing.T) {
	p, errs := FromConfigItems(map[string]string{
		KeyAllowPrivileged:          "yes please",
		KeyAllowHostNetwork:         "true",
		KeyAllowedHostPaths:         "/data,relative/dir",
		KeyAllowedCapabilities:      "SYS_MAGIC",
		KeyAllowedDevices:           "ttyUSB0",
		KeyAllowedUnsafeSysctls:     "kernel.panic",
		KeyAllowedHostPorts:         "80,70000",
		KeyAllowUnconfinedSeccomp:   "maybe",
		"evelet.policy.allow-world": "true",
	})
	if !p.AllowHostNetwork {
		t.Error("a good key was not applied next to bad ones")
	}
	if p.AllowPrivileged || p.AllowedHostPaths != nil || p.AllowedCapabilities != nil || p.AllowedDevices != nil || p.AllowedUnsafeSysctls != nil ||
		p.AllowedHostPorts != nil || p.AllowUnconfinedSeccomp {
		t.Errorf("bad values changed the policy: %+v", p)
	}
	for _, key := range []string{KeyAllowPrivileged, KeyAllowedHostPaths, KeyAllowedCapabilities, KeyAllowedDevices, KeyAllowedUnsafeSysctls,
		KeyAllowedHostPorts, KeyAllowUnconfinedSeccomp, "evelet.policy.allow-world"} {
		found := false
		for _, err := range errs {
			if strings.Contains(err.Error(), key+"=") {
				found = true
			}
		}
		if !found {
			t.Errorf("no error names %s: %v", key, errs)
		}
	}
	if len(errs) != 8 {
		t.Errorf("%d errors, want 8: %v", len(errs), errs)
	}
}

func TestFromConfigItemsEmptyValueIsDefault(t *testing.T) {
	p, errs := FromConfigItems(map[string]string{KeyAllowPrivileged: "", KeyAllowedHostPaths: " "})
	if len(errs) != 0 || p.AllowPrivileged || len(p.AllowedHostPaths) != 0 {
		t.Errorf("%+v %v", p, errs)
	}
}

func TestViolationMessage(t *testing.T) {
	err := Default().CheckContainer(pod("default", "x", "u1", nil), ctr("main", &runtimeapi.LinuxContainerSecurityContext{Privileged: true}))
	want := `evelet guardrail "no-privileged": container "main" of pod default/x asks for privileged mode; the device owner can allow it with config item evelet.policy.allow-privileged=true`
	if err == nil || err.Error() != want {
		t.Fatalf("got  %v\nwant %s", err, want)
	}
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || st.Message() != want {
		t.Errorf("gRPC status %v", st)
	}
	var v *Violation
	if !errors.As(err, &v) || v.Rule != RulePrivileged {
		t.Errorf("not a Violation: %#v", err)
	}
	err = Default().CheckSandbox(podWith(func(l *runtimeapi.LinuxPodSandboxConfig) { l.Sysctls = map[string]string{"kernel.msgmax": "1"} }))
	want = `evelet guardrail "no-unsafe-sysctls": pod default/p sets unsafe sysctl "kernel.msgmax"; the device owner can allow it by adding "kernel.msgmax" to config item evelet.policy.allowed-unsafe-sysctls`
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}
	err = Default().CheckSandbox(podWith(func(l *runtimeapi.LinuxPodSandboxConfig) { l.Sysctls = map[string]string{"kernel.panic": "1"} }))
	if err == nil || !strings.HasSuffix(err.Error(), "; no config item can allow this") {
		t.Errorf("non-namespaced sysctl: %v", err)
	}
}

func TestSubjectIsOneLine(t *testing.T) {
	sb := pod("ns\nx", "a b", "u", nil)
	err := Default().CheckSandbox(withSC(sb, &runtimeapi.LinuxSandboxSecurityContext{Privileged: true}))
	if err == nil || strings.Contains(err.Error(), "\n") {
		t.Errorf("%q", err)
	}
}

// Helpers building kubelet-shaped requests.

func pod(ns, name, uid string, l *runtimeapi.LinuxPodSandboxConfig) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Namespace: ns, Name: name, Uid: uid}, Linux: l}
}

func podWith(f func(*runtimeapi.LinuxPodSandboxConfig)) *runtimeapi.PodSandboxConfig {
	l := &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{}}}
	f(l)
	return pod("default", "p", "uid-p", l)
}

func withSC(sb *runtimeapi.PodSandboxConfig, sc *runtimeapi.LinuxSandboxSecurityContext) *runtimeapi.PodSandboxConfig {
	if sb.Linux == nil {
		sb.Linux = &runtimeapi.LinuxPodSandboxConfig{}
	}
	sb.Linux.SecurityContext = sc
	return sb
}

// kubeletSC is the security context the kubelet sends for a plain container.
func kubeletSC() *runtimeapi.LinuxContainerSecurityContext {
	return &runtimeapi.LinuxContainerSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{},
		MaskedPaths:      append(BaselineMaskedPaths(), "/sys/devices/virtual/powercap"),
		ReadonlyPaths:    BaselineReadonlyPaths(),
	}
}

func ctr(name string, sc *runtimeapi.LinuxContainerSecurityContext) *runtimeapi.ContainerConfig {
	return &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: name}, Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: sc}}
}

func ruleOf(err error) string {
	var v *Violation
	if errors.As(err, &v) {
		return v.Rule
	}
	if err != nil {
		return "not a violation: " + err.Error()
	}
	return ""
}

func TestSandboxRules(t *testing.T) {
	ns := func(net, pid, ipc runtimeapi.NamespaceMode) *runtimeapi.PodSandboxConfig {
		return withSC(pod("default", "p", "u", nil), &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: net, Pid: pid, Ipc: ipc}})
	}
	const node, podNS, ctrNS = runtimeapi.NamespaceMode_NODE, runtimeapi.NamespaceMode_POD, runtimeapi.NamespaceMode_CONTAINER
	cases := []struct {
		name  string
		sb    *runtimeapi.PodSandboxConfig
		rule  string
		allow func(*Policy)
	}{
		{"plain", ns(podNS, ctrNS, podNS), "", nil},
		{"nil config", nil, "", nil},
		{"privileged", withSC(pod("d", "p", "u", nil), &runtimeapi.LinuxSandboxSecurityContext{Privileged: true}), RulePrivileged, func(p *Policy) { p.AllowPrivileged = true }},
		{"hostNetwork", ns(node, ctrNS, podNS), RuleHostNetwork, func(p *Policy) { p.AllowHostNetwork = true }},
		{"hostPID", ns(podNS, node, podNS), RuleHostPID, func(p *Policy) { p.AllowHostPID = true }},
		{"hostIPC", ns(podNS, ctrNS, node), RuleHostIPC, func(p *Policy) { p.AllowHostIPC = true }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Default()
			if got := ruleOf(p.CheckSandbox(tc.sb)); got != tc.rule {
				t.Fatalf("rule %q, want %q", got, tc.rule)
			}
			if tc.allow != nil {
				tc.allow(&p)
				if err := p.CheckSandbox(tc.sb); err != nil {
					t.Errorf("still refused with the knob: %v", err)
				}
			}
		})
	}
}

func TestContainerNamespacesAndPrivileged(t *testing.T) {
	sb := pod("default", "p", "u", nil)
	sc := kubeletSC()
	sc.NamespaceOptions.Pid = runtimeapi.NamespaceMode_NODE
	if got := ruleOf(Default().CheckContainer(sb, ctr("c", sc))); got != RuleHostPID {
		t.Errorf("container hostPID: %q", got)
	}
	// A privileged container (allowed) needs no masked /proc, caps or device checks.
	priv := &runtimeapi.LinuxContainerSecurityContext{Privileged: true, Capabilities: &runtimeapi.Capability{AddCapabilities: []string{"SYS_ADMIN"}}}
	c := ctr("c", priv)
	c.Devices = []*runtimeapi.Device{{HostPath: "/dev/mem", ContainerPath: "/dev/mem"}}
	if err := (Policy{AllowPrivileged: true}).CheckContainer(sb, c); err != nil {
		t.Errorf("allowed privileged container refused: %v", err)
	}
	// Bidirectional mount propagation is for privileged containers only.
	bidi := ctr("c", kubeletSC())
	bidi.Mounts = []*runtimeapi.Mount{{ContainerPath: "/mnt", Propagation: runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL}}
	if got := ruleOf(Default().CheckContainer(sb, bidi)); got != RulePrivileged {
		t.Errorf("bidirectional propagation: %q", got)
	}
	bidi.Mounts[0].Propagation = runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER
	if err := Default().CheckContainer(sb, bidi); err != nil {
		t.Errorf("host-to-container propagation: %v", err)
	}
	// The sandbox is checked again at CreateContainer.
	hostNet := withSC(pod("default", "p", "u", nil), &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}})
	if got := ruleOf(Default().CheckContainer(hostNet, ctr("c", kubeletSC()))); got != RuleHostNetwork {
		t.Errorf("container in a hostNetwork pod: %q", got)
	}
	if err := Default().CheckContainer(nil, nil); err != nil {
		t.Errorf("request without a container config: %v", err)
	}
	if got := ruleOf(Default().CheckContainer(nil, &runtimeapi.ContainerConfig{})); got != RuleUnmaskedProc {
		t.Errorf("empty container config: %q", got)
	}
}

func TestSysctls(t *testing.T) {
	with := func(hostNet, hostIPC bool, kv ...string) *runtimeapi.PodSandboxConfig {
		return podWith(func(l *runtimeapi.LinuxPodSandboxConfig) {
			l.Sysctls = map[string]string{}
			for _, k := range kv {
				l.Sysctls[k] = "1"
			}
			if hostNet {
				l.SecurityContext.NamespaceOptions.Network = runtimeapi.NamespaceMode_NODE
			}
			if hostIPC {
				l.SecurityContext.NamespaceOptions.Ipc = runtimeapi.NamespaceMode_NODE
			}
		})
	}
	open := Policy{AllowHostNetwork: true, AllowHostIPC: true, AllowedUnsafeSysctls: []string{"kernel.msg*", "net.core.somaxconn", "kernel.panic"}}
	cases := []struct {
		name           string
		sb             *runtimeapi.PodSandboxConfig
		def, withKnobs string
	}{
		{"safe", with(false, false, "net.ipv4.ip_local_port_range", "kernel.shm_rmid_forced", "net.ipv4.tcp_rmem"), "", ""},
		{"safe slash form", with(false, false, "net/ipv4/ping_group_range"), "", ""},
		{"unsafe ipc", with(false, false, "kernel.msgmax"), RuleSysctls, ""},
		{"unsafe net", with(false, false, "net.core.somaxconn"), RuleSysctls, ""},
		{"unsafe net not listed", with(false, false, "net.core.rmem_max"), RuleSysctls, RuleSysctls},
		{"not namespaced", with(false, false, "kernel.panic"), RuleSysctls, RuleSysctls},
		{"vm", with(false, false, "vm.overcommit_memory"), RuleSysctls, RuleSysctls},
		{"safe net in host netns", with(true, false, "net.ipv4.tcp_syncookies"), RuleHostNetwork, RuleSysctls},
		{"ipc in host ipc", with(false, true, "kernel.shm_rmid_forced"), RuleHostIPC, RuleSysctls},
		{"wildcard name", with(false, false, "net.*"), RuleSysctls, RuleSysctls},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := ruleOf(Default().CheckSandbox(tc.sb)); got != tc.def {
				t.Errorf("default policy: %q, want %q", got, tc.def)
			}
			if got := ruleOf(open.CheckSandbox(tc.sb)); got != tc.withKnobs {
				t.Errorf("with knobs: %q, want %q", got, tc.withKnobs)
			}
		})
	}
}

func TestCapabilities(t *testing.T) {
	sb := pod("default", "p", "u", nil)
	c := func(add, ambient []string) *runtimeapi.ContainerConfig {
		sc := kubeletSC()
		sc.Capabilities = &runtimeapi.Capability{AddCapabilities: add, DropCapabilities: []string{"ALL"}, AddAmbientCapabilities: ambient}
		return ctr("c", sc)
	}
	cases := []struct {
		name     string
		cc       *runtimeapi.ContainerConfig
		p        Policy
		want     string
		wantText string
	}{
		{"re-add defaults", c([]string{"NET_BIND_SERVICE", "chown", "CAP_KILL"}, nil), Default(), "", ""},
		{"sys_admin", c([]string{"SYS_ADMIN"}, nil), Default(), RuleCapabilities, `adds capability "SYS_ADMIN"`},
		{"cap_ prefix lower case", c([]string{"cap_net_admin"}, nil), Default(), RuleCapabilities, `"NET_ADMIN" to config item evelet.policy.allowed-capabilities`},
		{"all", c([]string{"ALL"}, nil), Default(), RuleCapabilities, "adds all capabilities (ALL)"},
		{"ambient", c(nil, []string{"NET_ADMIN"}), Default(), RuleCapabilities, "adds ambient capability"},
		{"allowed", c([]string{"NET_ADMIN", "SYS_TIME"}, []string{"NET_ADMIN"}), Policy{AllowedCapabilities: []string{"NET_ADMIN", "SYS_TIME"}}, "", ""},
		{"allowed ALL", c([]string{"ALL", "SYS_ADMIN"}, nil), Policy{AllowedCapabilities: []string{"ALL"}}, "", ""},
		{"allowlist lower case", c([]string{"SYS_TIME"}, nil), Policy{AllowedCapabilities: []string{"cap_sys_time"}}, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.CheckContainer(sb, tc.cc)
			if got := ruleOf(err); got != tc.want {
				t.Fatalf("%q (%v), want %q", got, err, tc.want)
			}
			if tc.wantText != "" && !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("%v\nlacks %s", err, tc.wantText)
			}
		})
	}
}

func TestDevices(t *testing.T) {
	dir := t.TempDir()
	node := filepath.Join(dir, "ttyUSB0")
	os.WriteFile(node, nil, 0o600)
	link := filepath.Join(dir, "by-id")
	os.Symlink(node, link)
	sb := pod("default", "p", "u", nil)
	dev := func(paths ...string) *runtimeapi.ContainerConfig {
		c := ctr("c", kubeletSC())
		for _, p := range paths {
			c.Devices = append(c.Devices, &runtimeapi.Device{HostPath: p, ContainerPath: p, Permissions: "rw"})
		}
		return c
	}
	cdi := ctr("c", kubeletSC())
	cdi.CDIDevices = []*runtimeapi.CDIDevice{{Name: "vendor.com/gpu=0"}}
	cases := []struct {
		name string
		cc   *runtimeapi.ContainerConfig
		p    Policy
		want string
	}{
		{"none", dev(), Default(), ""},
		{"dev mem", dev("/dev/mem"), Default(), RuleDevices},
		{"exact", dev("/dev/mem"), Policy{AllowedDevices: []string{"/dev/mem"}}, ""},
		{"glob", dev("/dev/ttyUSB3"), Policy{AllowedDevices: []string{"/dev/ttyUSB*"}}, ""},
		{"glob no match", dev("/dev/ttyS0"), Policy{AllowedDevices: []string{"/dev/ttyUSB*"}}, RuleDevices},
		{"dotdot", dev("/dev/ttyUSB0/../mem"), Policy{AllowedDevices: []string{"/dev/*"}}, RuleDevices},
		{"cdi", cdi, Default(), RuleDevices},
		{"cdi allowed", cdi, Policy{AllowedDevices: []string{"vendor.com/gpu=0"}}, ""},
		{"link allowed with its target", dev(link), Policy{AllowedDevices: []string{link, node}}, ""},
		{"link to an allowed-by-link node", dev(link), Policy{AllowedDevices: []string{link}}, ""},
		{"link target not allowed", dev(link), Policy{AllowedDevices: []string{filepath.Join(dir, "by-*")}}, RuleDevices},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := ruleOf(tc.p.CheckContainer(sb, tc.cc)); got != tc.want {
				t.Errorf("%q, want %q", got, tc.want)
			}
		})
	}
}

func TestUnmaskedProc(t *testing.T) {
	sb := pod("default", "p", "u", nil)
	unmasked := kubeletSC()
	unmasked.MaskedPaths, unmasked.ReadonlyPaths = nil, nil
	noKcore := kubeletSC()
	noKcore.MaskedPaths = []string{"/proc/acpi"}
	noSys := kubeletSC()
	noSys.ReadonlyPaths = []string{"/proc/bus"}
	cases := []struct {
		name string
		sc   *runtimeapi.LinuxContainerSecurityContext
		want string
		text string
	}{
		{"kubelet default", kubeletSC(), "", ""},
		{"no security context", nil, RuleUnmaskedProc, "no masked paths at all"},
		{"procMount Unmasked", unmasked, RuleUnmaskedProc, "procMount: Unmasked"},
		{"no readonly paths", &runtimeapi.LinuxContainerSecurityContext{MaskedPaths: BaselineMaskedPaths()}, RuleUnmaskedProc, "/proc/bus is not read-only"},
		{"masked list without kcore", noKcore, RuleUnmaskedProc, "/proc/asound is not masked"},
		{"readonly list without sys", noSys, RuleUnmaskedProc, "/proc/fs is not read-only"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Default().CheckContainer(sb, ctr("c", tc.sc))
			if got := ruleOf(err); got != tc.want {
				t.Fatalf("%q, want %q", got, tc.want)
			}
			if tc.text != "" && !strings.Contains(err.Error(), tc.text) {
				t.Errorf("%v lacks %q", err, tc.text)
			}
			if err := (Policy{AllowUnmaskedProc: true}).CheckContainer(sb, ctr("c", tc.sc)); err != nil {
				t.Errorf("with the knob: %v", err)
			}
		})
	}
}

// kubectl debug --profile=sysadmin: the kubelet sends the pod's sandbox as
// privileged because the new ephemeral container is; the refusal names the
// container, not the sandbox.
func TestPrivilegedContainerNamedBeforeItsSandbox(t *testing.T) {
	sb := podWith(func(l *runtimeapi.LinuxPodSandboxConfig) { l.SecurityContext.Privileged = true })
	sc := kubeletSC()
	sc.Privileged = true
	err := Default().CheckContainer(sb, ctr("debugger-x", sc))
	if err == nil || !strings.Contains(err.Error(), `container "debugger-x" of pod default/p asks for privileged mode`) {
		t.Errorf("got %v", err)
	}
	// A plain container in a privileged sandbox: the sandbox is named.
	err = Default().CheckContainer(sb, ctr("main", kubeletSC()))
	if err == nil || !strings.Contains(err.Error(), "privileged sandbox") {
		t.Errorf("got %v", err)
	}
}

// TestVMOverlayMaxSize: the overlay cap is a quantity of at least 1Mi; a
// bad value names the key and leaves the default, 10Gi.
func TestVMOverlayMaxSize(t *testing.T) {
	if got := Default().VMOverlayMax(); got != 10<<30 {
		t.Errorf("default overlay cap %d, want 10Gi", got)
	}
	for v, want := range map[string]int64{"500Mi": 500 << 20, "1G": 1e9, " 4Gi ": 4 << 30, "": 10 << 30} {
		p, errs := FromConfigItems(map[string]string{KeyVMOverlayMaxSize: v})
		if len(errs) != 0 || p.VMOverlayMax() != want {
			t.Errorf("%q: cap %d %v, want %d", v, p.VMOverlayMax(), errs, want)
		}
	}
	for _, v := range []string{"lots", "0", "-1Gi", "512Ki", "1.5"} {
		p, errs := FromConfigItems(map[string]string{KeyVMOverlayMaxSize: v})
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), KeyVMOverlayMaxSize+"=") || p.VMOverlayMax() != DefaultVMOverlayMaxSize {
			t.Errorf("%q: cap %d, errors %v: want one naming the key and the default cap", v, p.VMOverlayMax(), errs)
		}
	}
}
