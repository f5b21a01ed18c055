package policy

import (
	"strings"
	"testing"
)

func TestCheckVolumePlugin(t *testing.T) {
	allowNFS, errs := FromConfigItems(map[string]string{KeyAllowedVolumePlugins: "NFS, kubernetes.io/iscsi"})
	if len(errs) != 0 || strings.Join(allowNFS.AllowedVolumePlugins, ",") != "nfs,iscsi" {
		t.Fatalf("allowed-volume-plugins: %v %v", allowNFS.AllowedVolumePlugins, errs)
	}
	cases := []struct {
		p      Policy
		plugin string
		want   string // "" or a piece of the refusal
	}{
		{Default(), "kubernetes.io/empty-dir", ""},
		{Default(), "kubernetes.io/secret", ""},
		{Default(), "kubernetes.io/csi", ""},
		{Default(), "kubernetes.io/host-path", ""}, // judged by its path
		{Default(), "kubernetes.io/local-volume", ""},
		{Default(), "kubernetes.io/nfs", `evelet guardrail "no-host-volume-plugins": pod default/p has volume "v" of plugin kubernetes.io/nfs, which makes the kubelet mount or run programs on the device itself; the device owner can allow it by adding "nfs" to config item evelet.policy.allowed-volume-plugins`},
		{Default(), "kubernetes.io/fc", `adding "fc"`},
		{Default(), "kubernetes.io/git-repo", `adding "git-repo"`},
		{Default(), "kubernetes.io/portworx-volume", `adding "portworx-volume"`},
		{allowNFS, "kubernetes.io/nfs", ""},
		{allowNFS, "kubernetes.io/iscsi", ""},
		{allowNFS, "kubernetes.io/fc", `adding "fc"`},
		{Default(), "flexvolume-acme/driver", `"no-host-volume-plugins": pod default/p has volume "v" of plugin flexvolume-acme/driver, which evelet does not know and so cannot judge; no config item`},
		{Default(), "kubernetes.io/image", `evelet guardrail "no-image-volumes"`},
		{allowNFS, "kubernetes.io/image", "no config item can allow this"},
	}
	for _, tc := range cases {
		err := tc.p.CheckVolumePlugin("pod default/p", "v", tc.plugin)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s refused: %v", tc.plugin, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v\nwant %s", tc.plugin, err, tc.want)
		}
	}
	for _, bad := range []string{"hostPath", "empty-dir", "image", "ceph"} {
		if _, errs := FromConfigItems(map[string]string{KeyAllowedVolumePlugins: bad}); len(errs) != 1 {
			t.Errorf("allowed-volume-plugins=%s accepted", bad)
		}
	}
}

// JudgeHostPath is what the kubelet's guard sees of a hostPath or local
// PersistentVolume: the same verdicts as the CRI's check.
func TestJudgeHostPath(t *testing.T) {
	p := Policy{KubeletRootDir: kroot, PodLogsDir: "/persist/evelet/logs/pods", AllowedHostPaths: []string{"/data", "/persist"}}
	for hp, want := range map[string]string{
		"/data/x":                     "",
		"/data/link-to-logs/ns_p_u":   `has local volume "v" on "/data/link-to-logs/ns_p_u" (a link to "/persist/evelet/logs/pods/ns_p_u"), inside the kubelet's pod-logs directory ("/persist/evelet/logs/pods"); no config item`,
		"/persist/evelet/logs/pods":   "inside the kubelet's pod-logs directory",
		kroot + "/pods":               "inside the kubelet's root directory",
		"/persist/evelet":             "a parent of the kubelet's pod-logs directory",
		"/persist/evelet/credentials": "evelet's state directory",
		"/srv":                        `adding "/srv" to config item evelet.policy.allowed-host-paths`,
	} {
		v, err := p.judgeHostPath(device(), "pod default/p", `has local volume "v" on`, hp)
		switch {
		case want == "" && err != nil:
			t.Errorf("%s refused: %v", hp, err)
		case want == "" && v.AllowedRoot != "/data":
			t.Errorf("%s: %+v", hp, v)
		case want != "" && (err == nil || err.Rule != RuleHostPath || !strings.Contains(err.Error(), want)):
			t.Errorf("%s: %v\nwant %s", hp, err, want)
		}
	}
}
