package kubeletshim

import (
	"context"
	"strings"
	"testing"

	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/kubernetes/pkg/kubelet/apis/config/validation"
	"k8s.io/kubernetes/pkg/kubelet/kubeletconfig/configfiles"
	utilfs "k8s.io/kubernetes/pkg/util/filesystem"
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
		if got := SanitizeLabelValue(in); got != want {
			t.Errorf("%q -> %q, want %q", in, got, want)
		}
	}
}
