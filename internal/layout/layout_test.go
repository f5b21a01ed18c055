package layout

import "testing"

// The paths are an on-disk contract with devices in the field (credentials
// survive upgrades): a rename here must be a deliberate migration.
func TestPathsAreStable(t *testing.T) {
	s := State{Dir: "/persist/evelet"}
	c := s.Credentials()
	r := Run{Dir: DefaultRunDir}
	for got, want := range map[string]string{
		c.Dir:                       "/persist/evelet/credentials",
		c.BootstrapKubeconfig():     "/persist/evelet/credentials/bootstrap-kubeconfig",
		c.Kubeconfig():              "/persist/evelet/credentials/kubeconfig",
		c.CertDir():                 "/persist/evelet/credentials/pki",
		c.ClusterCA():               "/persist/evelet/credentials/ca.crt",
		c.JoinRecord():              "/persist/evelet/credentials/join.json",
		s.KubeletConfig():           "/persist/evelet/kubelet/config.yaml",
		s.KubeletRoot():             "/persist/evelet/kubelet/root",
		s.PodLogs():                 "/persist/evelet/logs/pods",
		s.UpgradeState():            "/persist/evelet/upgrade/state.json",
		s.EveNI():                   "/persist/evelet/cni/eve-ni",
		s.CNI().MetaState():         "/persist/evelet/cni/evelet-cni",
		s.CNI().GCCache():           "/persist/evelet/cni/gc-cache",
		s.CNI().NetworkKubeconfig(): "/persist/evelet/cni/evelet-network.kubeconfig",
		s.VM():                      "/persist/evelet/vm",
		s.VMNet():                   "/persist/evelet/vm-net",
		s.CDI():                     "/persist/evelet/dra/cdi",
		r.CRISocket():               "/run/evelet/cri.sock",
		r.Status():                  "/run/evelet/status.json",
		r.KubeletPolicy():           "/run/evelet/kubelet-policy.json",
		r.UpgradeBootMarker():       "/run/evelet/upgrade-boot",
		r.EveNISettings():           "/run/evelet/eve-ni.json",
		r.DHCPSocket():              "/run/evelet/cni-dhcp.sock",
		r.Netns():                   "/run/evelet/netns",
	} {
		if got != want {
			t.Errorf("%s, want %s", got, want)
		}
	}
}
