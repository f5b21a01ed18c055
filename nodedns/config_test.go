package nodedns

import (
	"strings"
	"testing"
)

func TestCorefileBindsOnlyTheAddressAndNamesEachPart(t *testing.T) {
	got, err := Config{Kubeconfig: "/persist/evelet/credentials/kubeconfig", Upstreams: []string{"10.0.0.2", "10.0.0.3:5353", "2001:db8::1"}}.Corefile()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		".:53 {",
		"bind 169.254.20.10\n",
		"kubernetes cluster.local in-addr.arpa ip6.arpa {",
		"kubeconfig /persist/evelet/credentials/kubeconfig\n",
		"pods disabled",
		"serve_stale 24h0m0s",
		"forward . 10.0.0.2:53 10.0.0.3:5353 [2001:db8::1]:53\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Corefile lacks %q:\n%s", want, got)
		}
	}
}

func TestCorefileWithoutUpstreamsForwardsNothing(t *testing.T) {
	got, err := Config{Kubeconfig: "/k", ClusterDomain: "edge.example"}.Corefile()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(got, "forward") || !strings.Contains(got, "kubernetes edge.example ") {
		t.Fatalf("Corefile:\n%s", got)
	}
}

// Every value comes from the join or from EVE; none may smuggle a
// directive into the Corefile.
func TestCorefileRefusesWhatCouldInjectDirectives(t *testing.T) {
	for name, c := range map[string]Config{
		"address not IP":       {Kubeconfig: "/k", Address: "169.254.20.10 {"},
		"IPv6 address":         {Kubeconfig: "/k", Address: "fe80::1"},
		"domain with brace":    {Kubeconfig: "/k", ClusterDomain: "cluster.local {\n forward . 1.1.1.1"},
		"kubeconfig with nl":   {Kubeconfig: "/k\n  endpoint http://evil"},
		"kubeconfig with sp":   {Kubeconfig: "/k x"},
		"no kubeconfig":        {},
		"upstream not IP":      {Kubeconfig: "/k", Upstreams: []string{"dns.example"}},
		"upstream with suffix": {Kubeconfig: "/k", Upstreams: []string{"1.1.1.1 {"}},
		"port":                 {Kubeconfig: "/k", Port: 70000},
	} {
		if s, err := c.Corefile(); err == nil {
			t.Errorf("%s: accepted:\n%s", name, s)
		}
	}
}
