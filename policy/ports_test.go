package policy

import (
	"errors"
	"net"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func withPorts(hostNet bool, ports ...int32) *runtimeapi.PodSandboxConfig {
	sb := podWith(func(l *runtimeapi.LinuxPodSandboxConfig) {
		if hostNet {
			l.SecurityContext.NamespaceOptions.Network = runtimeapi.NamespaceMode_NODE
		}
	})
	for _, p := range ports {
		sb.PortMappings = append(sb.PortMappings, &runtimeapi.PortMapping{Protocol: runtimeapi.Protocol_TCP, ContainerPort: 80, HostPort: p})
	}
	return sb
}

func TestHostPorts(t *testing.T) {
	listening := &fakeFS{ports: map[int]bool{22: true, 2379: true, 10250: true}}
	allowAll := Policy{AllowedHostPorts: []string{"1-65535"}}
	cases := []struct {
		name string
		p    Policy
		fs   *fakeFS
		sb   *runtimeapi.PodSandboxConfig
		want string // "" or a piece of the refusal
	}{
		{"no host port", Policy{}, listening, withPorts(false, 0), ""},
		{"default refuses", Policy{}, listening, withPorts(false, 8080), `asks for host port 8080/tcp; the device owner can allow it by adding "8080" to config item evelet.policy.allowed-host-ports`},
		// One answer for a port the device uses, allowed or not.
		{"kubelet port by default", Policy{}, listening, withPorts(false, 10250), "one of the device's own services; no config item can allow this"},
		{"a listening port by default", Policy{}, listening, withPorts(false, 2379), "which a service of the device listens on; no config item can allow this"},
		{"a listening port, allowed", Policy{AllowedHostPorts: []string{"2379"}}, listening, withPorts(false, 2379), "which a service of the device listens on; no config item can allow this"},
		{"allowed single", Policy{AllowedHostPorts: []string{"8080"}}, listening, withPorts(false, 8080), ""},
		{"allowed range", Policy{AllowedHostPorts: []string{"30000-30100"}}, listening, withPorts(false, 30000, 30100), ""},
		{"outside the range", Policy{AllowedHostPorts: []string{"30000-30100"}}, listening, withPorts(false, 30101), `"30101"`},
		{"kubelet API even when allowed", allowAll, &fakeFS{}, withPorts(false, 10250), "one of the device's own services; no config item"},
		{"kubelet healthz even when allowed", allowAll, &fakeFS{}, withPorts(false, 10248), "one of the device's own services"},
		{"evelet metrics even when allowed", allowAll, &fakeFS{}, withPorts(false, 10260), "one of the device's own services"},
		{"configured device port", Policy{AllowedHostPorts: []string{"1-65535"}, DevicePorts: []int{11250}}, &fakeFS{}, withPorts(false, 8080, 11250), "host port 11250/tcp, which is one of the device's own services"},
		{"a listening service", allowAll, listening, withPorts(false, 8080, 2379), "host port 2379/tcp, which a service of the device listens on; no config item"},
		{"ssh", allowAll, listening, withPorts(false, 22), "listens on"},
		{"open ports unreadable", allowAll, &fakeFS{portsErr: errors.New("no /proc")}, withPorts(false, 8080), "no /proc"},
		{"not a port", allowAll, &fakeFS{}, withPorts(false, 70000), "not a port"},
		{"host network is not mapped", Policy{AllowHostNetwork: true}, listening, withPorts(true, 10250), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &checker{p: tc.p, fs: tc.fs}
			v := c.sandbox(tc.sb)
			switch {
			case tc.want == "" && v != nil:
				t.Errorf("refused: %v", v)
			case tc.want != "" && v == nil:
				t.Errorf("admitted, want a refusal with %s", tc.want)
			case v != nil && (v.Rule != RuleHostPorts || !strings.Contains(v.Error(), tc.want)):
				t.Errorf("%v\nlacks %s", v, tc.want)
			}
			// A new container of the pod is held to the same rule.
			if w := c.container(tc.sb, ctr("main", kubeletSC())); (w == nil) != (v == nil) {
				t.Errorf("CreateContainer disagrees: %v", w)
			}
		})
	}
}

func TestParseProcNet(t *testing.T) {
	tcp := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2742 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:C350 0100007F:2742 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
`
	tcp6 := `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:280A 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
`
	udp := `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 5 2 0000000000000000 0
`
	got := map[int]bool{}
	for _, in := range []struct {
		b   string
		tcp bool
	}{{tcp, true}, {tcp6, true}, {udp, false}} {
		if err := parseProcNet([]byte(in.b), in.tcp, got); err != nil {
			t.Fatal(err)
		}
	}
	// 0x2742 = 10050, 0x16 = 22, 0x280A = 10250, 0x44 = 68; 0xC350 is a
	// connected client socket, not a listener.
	want := map[int]bool{10050: true, 22: true, 10250: true, 68: true}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for p := range want {
		if !got[p] {
			t.Errorf("port %d missing: %v", p, got)
		}
	}
	if err := parseProcNet([]byte("h\n 0: nonsense 0 0A\n"), true, got); err == nil {
		t.Error("bad address accepted")
	}
}

// The real reader sees a socket this test opens.
func TestRealListeningPorts(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skip(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	got, err := realFS{}.ListeningPorts()
	if err != nil || !got[port] {
		t.Errorf("port %d not seen listening: %v", port, err)
	}
}

func TestSeccomp(t *testing.T) {
	unconfined := &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
	rd := &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
	local := &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "/var/lib/kubelet/seccomp/x.json"}
	sbWith := func(sp *runtimeapi.SecurityProfile) *runtimeapi.PodSandboxConfig {
		return podWith(func(l *runtimeapi.LinuxPodSandboxConfig) { l.SecurityContext.Seccomp = sp })
	}
	ctrWith := func(sp *runtimeapi.SecurityProfile, path string) *runtimeapi.ContainerConfig {
		sc := kubeletSC()
		sc.Seccomp, sc.SeccompProfilePath = sp, path
		return ctr("main", sc)
	}
	want := `asks for no seccomp filter (seccompProfile: Unconfined); the device owner can allow it with config item evelet.policy.allow-unconfined-seccomp=true`
	for name, err := range map[string]error{
		"pod":                 Default().CheckSandbox(sbWith(unconfined)),
		"container":           Default().CheckContainer(sbWith(rd), ctrWith(unconfined, "")),
		"container, old path": Default().CheckContainer(sbWith(rd), ctrWith(nil, "unconfined")),
		"pod, on a container": Default().CheckContainer(sbWith(unconfined), ctrWith(rd, "")),
	} {
		if err == nil || ruleOf(err) != RuleSeccomp || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name, err := range map[string]error{
		"runtime default": Default().CheckContainer(sbWith(rd), ctrWith(rd, "")),
		"localhost":       Default().CheckContainer(sbWith(local), ctrWith(local, "")),
		"none sent":       Default().CheckContainer(sbWith(nil), ctrWith(nil, "")),
		"allowed":         Policy{AllowUnconfinedSeccomp: true}.CheckContainer(sbWith(unconfined), ctrWith(unconfined, "")),
		"privileged":      Policy{AllowPrivileged: true}.CheckContainer(sbWith(rd), ctr("main", &runtimeapi.LinuxContainerSecurityContext{Privileged: true, Seccomp: unconfined})),
	} {
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
