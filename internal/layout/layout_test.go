package layout

import "testing"

// The paths are an on-disk contract with devices in the field (credentials
// survive upgrades): a rename here must be a deliberate migration.
func TestPathsAreStable(t *testing.T) {
	s := State{Dir: "/persist/evelet"}
	c := s.Credentials()
	for got, want := range map[string]string{
		c.Dir:                   "/persist/evelet/credentials",
		c.BootstrapKubeconfig(): "/persist/evelet/credentials/bootstrap-kubeconfig",
		c.Kubeconfig():          "/persist/evelet/credentials/kubeconfig",
		c.CertDir():             "/persist/evelet/credentials/pki",
		c.ClusterCA():           "/persist/evelet/credentials/ca.crt",
		c.JoinRecord():          "/persist/evelet/credentials/join.json",
		s.KubeletConfig():       "/persist/evelet/kubelet/config.yaml",
		s.KubeletRoot():         "/persist/evelet/kubelet/root",
		s.PodLogs():             "/persist/evelet/logs/pods",
	} {
		if got != want {
			t.Errorf("%s, want %s", got, want)
		}
	}
}
