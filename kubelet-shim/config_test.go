package kubeletshim

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/kubernetes/pkg/kubelet/apis/config/validation"
	"k8s.io/kubernetes/pkg/kubelet/kubeletconfig/configfiles"
	utilfs "k8s.io/kubernetes/pkg/util/filesystem"

	"github.com/lf-edge/evelet/internal/nodelabels"
)

func opts(t *testing.T) *Options {
	d := t.TempDir()
	return &Options{
		NodeName: "edge-1", DeviceUUID: "6ba7b810-9dad-11d1-80b4-00c04fd430c8", OSVersion: "14.5.1-lts kvm/amd64",
		StateDir: d, CredentialsDir: d + "/creds", CRIEndpoint: "unix:///run/evelet/cri.sock", CgroupV1: true,
	}
}

// The generated file must load and validate with the kubelet's own code,
// exactly as the kubelet will at start.
func TestConfigLoadsWithKubeletLoader(t *testing.T) {
	o := opts(t)
	if err := o.WriteConfig(); err != nil {
		t.Fatal(err)
	}
	loader, err := configfiles.NewFsLoader(&utilfs.DefaultFs{}, o.ConfigPath())
	if err != nil {
		t.Fatal(err)
	}
	kc, err := loader.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := validation.ValidateKubeletConfiguration(kc, utilfeature.DefaultFeatureGate); err != nil {
		t.Fatal(err)
	}
	if kc.FailCgroupV1 != false || kc.ProviderID != "eve://"+o.DeviceUUID || !kc.RotateCertificates ||
		kc.ContainerRuntimeEndpoint != o.CRIEndpoint || kc.CgroupDriver != "cgroupfs" || kc.Authentication.Anonymous.Enabled {
		t.Fatalf("unexpected config: %+v", kc)
	}
}

func TestConfigCgroupV2KeepsDefault(t *testing.T) {
	o := opts(t)
	o.CgroupV1 = false
	if o.Config().FailCgroupV1 != nil {
		t.Fatal("failCgroupV1 must stay unset on cgroup v2")
	}
}

func TestArgsCarryLabels(t *testing.T) {
	a := strings.Join(opts(t).Args(), " ")
	for _, want := range []string{
		"--node-labels=node.eve.lf-edge.org/device-uuid=6ba7b810-9dad-11d1-80b4-00c04fd430c8,node.eve.lf-edge.org/os-version=14.5.1-lts_kvm_amd64",
		"--hostname-override=edge-1", "--bootstrap-kubeconfig=",
	} {
		if !strings.Contains(a, want) {
			t.Errorf("args %q lack %q", a, want)
		}
	}
}

func TestValidateRejectsBadNodeName(t *testing.T) {
	o := opts(t)
	o.NodeName = "Edge_1"
	if err := o.Validate(); err == nil {
		t.Fatal("expected an error for a non RFC 1123 node name")
	}
}

func TestSanitizeLabelValue(t *testing.T) {
	for in, want := range map[string]string{
		"14.5.1-lts-kvm-amd64":  "14.5.1-lts-kvm-amd64",
		"0.0.0-master+abc/x":    "0.0.0-master_abc_x",
		"-x-":                   "x",
		strings.Repeat("a", 70): strings.Repeat("a", 63),
	} {
		if got := nodelabels.SanitizeValue(in); got != want {
			t.Errorf("%q -> %q, want %q", in, got, want)
		}
	}
}

// The tenant-node settings, as the kubelet's own loader reads them back.
func TestConfigTenantSettings(t *testing.T) {
	o := opts(t)
	o.NodeIP = "192.0.2.10"
	o.ConfigItems = map[string]string{
		ItemSystemReserved: "memory=1Gi", ItemPodPidsLimit: "2048",
		ItemKubeReserved:                 "cpu=lots", // refused: keeps the default
		"evelet.policy.allow-privileged": "true",     // not ours
	}
	if err := o.WriteConfig(); err != nil {
		t.Fatal(err)
	}
	loader, _ := configfiles.NewFsLoader(&utilfs.DefaultFs{}, o.ConfigPath())
	kc, err := loader.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := validation.ValidateKubeletConfiguration(kc, utilfeature.DefaultFeatureGate); err != nil {
		t.Fatal(err)
	}
	if kc.EnableSystemLogHandler || kc.EnableSystemLogQuery || kc.EnableProfilingHandler || kc.EnableDebugFlagsHandler {
		t.Errorf("debug handlers on: logs %v query %v pprof %v flags %v", kc.EnableSystemLogHandler, kc.EnableSystemLogQuery, kc.EnableProfilingHandler, kc.EnableDebugFlagsHandler)
	}
	if kc.Address != "192.0.2.10" || kc.HealthzBindAddress != "127.0.0.1" || kc.ReadOnlyPort != 0 {
		t.Errorf("address %q healthz %q readOnlyPort %d", kc.Address, kc.HealthzBindAddress, kc.ReadOnlyPort)
	}
	if !kc.ServerTLSBootstrap {
		t.Error("serverTLSBootstrap off")
	}
	if kc.PodPidsLimit != 2048 {
		t.Errorf("podPidsLimit %d", kc.PodPidsLimit)
	}
	if kc.SystemReserved["memory"] != "1Gi" || kc.SystemReserved["cpu"] != DefaultSystemReserved["cpu"] {
		t.Errorf("systemReserved %v", kc.SystemReserved)
	}
	if kc.KubeReserved["cpu"] != DefaultKubeReserved["cpu"] || kc.KubeReserved["memory"] != DefaultKubeReserved["memory"] {
		t.Errorf("kubeReserved %v", kc.KubeReserved)
	}
	for _, sig := range []string{"memory.available", "nodefs.available", "imagefs.available", "pid.available"} {
		if kc.EvictionHard[sig] == "" {
			t.Errorf("evictionHard lacks %s: %v", sig, kc.EvictionHard)
		}
	}
	errs := o.ConfigItemErrors()
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), ItemKubeReserved) {
		t.Errorf("item errors %v, want one naming %s", errs, ItemKubeReserved)
	}
	if a := strings.Join(o.Args(), " "); !strings.Contains(a, "--node-ip=192.0.2.10") {
		t.Errorf("args %q", a)
	}
}

// Without a node IP, WriteConfig pins the address of the default-route
// interface: the kubelet never listens on every address. The test runs
// WriteConfig in network namespaces it makes, so the right answer is known:
// one with an address and a default route, one with only loopback (where
// WriteConfig must fail, not pin nothing or 0.0.0.0).
func TestWriteConfigPinsAnAddress(t *testing.T) {
	if want, ok := os.LookupEnv(inNetnsEnv); ok {
		writeConfigInNetns(t, want)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes network namespaces")
	}
	for _, tc := range []struct{ name, want string }{{"routed", "192.0.2.77"}, {"loopback-only", "none"}} {
		t.Run(tc.name, func(t *testing.T) {
			ns := fmt.Sprintf("evks-%d-%s", os.Getpid(), tc.name)
			run := func(args ...string) {
				if b, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
					t.Fatalf("ip %v: %v: %s", args, err, b)
				}
			}
			run("netns", "add", ns)
			t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
			run("-n", ns, "link", "set", "lo", "up")
			if tc.want != "none" {
				run("-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
				run("-n", ns, "addr", "add", tc.want+"/24", "dev", "d0")
				run("-n", ns, "link", "set", "d1", "up")
				run("-n", ns, "link", "set", "d0", "up")
				run("-n", ns, "route", "add", "default", "via", "192.0.2.1")
			}
			cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run", "^TestWriteConfigPinsAnAddress$", "-test.v")
			cmd.Env = append(os.Environ(), inNetnsEnv+"="+tc.want)
			b, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(b), "--- PASS: TestWriteConfigPinsAnAddress") {
				t.Fatalf("in netns %s: %v\n%s", ns, err, b)
			}
		})
	}
}

const inNetnsEnv = "EVELET_TEST_WRITECONFIG_NETNS"

// writeConfigInNetns is the child half of TestWriteConfigPinsAnAddress.
func writeConfigInNetns(t *testing.T, want string) {
	o := opts(t)
	err := o.WriteConfig()
	if want == "none" {
		if err == nil {
			t.Fatalf("WriteConfig with no routed interface pinned %q, want an error", o.NodeIP)
		}
		if _, serr := os.Stat(o.ConfigPath()); serr == nil {
			t.Fatal("a config was written without a node address")
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if o.NodeIP != want || o.Config().Address != want {
		t.Fatalf("node IP %q, address %q, want %s", o.NodeIP, o.Config().Address, want)
	}
	if !strings.Contains(strings.Join(o.Args(), " "), "--node-ip="+want) {
		t.Fatal("--node-ip not pinned")
	}
}

func TestReservationItems(t *testing.T) {
	for v, ok := range map[string]bool{
		"cpu=1,memory=512Mi": true, "pid=100": true, "memory=-1Gi": false, "gpu=1": false, "memory": false,
	} {
		m := map[string]string{"memory": "1"}
		err := parseReservation(v, &m)
		if (err == nil) != ok {
			t.Errorf("%q: %v", v, err)
		}
		if err != nil && m["memory"] != "1" {
			t.Errorf("%q: a refused value changed the map: %v", v, m)
		}
	}
}

func TestArgsCarryPolicyFile(t *testing.T) {
	o := opts(t)
	o.PolicyFile = "/run/evelet/kubelet-policy.json"
	if a := o.Args(); a[0] != PolicyFileFlag+"=/run/evelet/kubelet-policy.json" {
		t.Fatalf("args %q", a)
	}
}
