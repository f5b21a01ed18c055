package kubeproxy

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
)

// TestRemoveRulesTakesOnlyKubeProxysTables runs in a throwaway network
// namespace holding kube-proxy's two tables and a table standing for EVE's
// firewall (with iptables-nft's nat table too): RemoveRules leaves the
// namespace's ruleset exactly as it was before kube-proxy's tables were
// added, and a second call (nothing left) is no error.
func TestRemoveRulesTakesOnlyKubeProxysTables(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and nftables tables in it")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("nft missing (apt-get install nftables): %v", err)
	}
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Close(); testutils.UnmountNS(netns) })
	nft := func(script string) string {
		t.Helper()
		cmd := exec.Command("nft", "-f", "-")
		if script == "" {
			cmd = exec.Command("nft", "list", "ruleset")
		}
		cmd.Stdin = strings.NewReader(script)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("nft %q: %v: %s", script, err, out)
		}
		return string(out)
	}
	err = netns.Do(func(ns.NetNS) error {
		nft(`table inet eve-fw {
	chain input { type filter hook input priority 0; policy accept; tcp dport 22 drop; }
}
table ip nat {
	chain POSTROUTING { type nat hook postrouting priority srcnat; policy accept; oifname "eth0" masquerade; }
}
`)
		before := nft("")
		nft(`table ip kube-proxy {
	chain services { }
	chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }
}
table ip6 kube-proxy {
	chain services { }
}
`)
		if err := RemoveRules(context.Background()); err != nil {
			t.Errorf("RemoveRules: %v", err)
		}
		if after := nft(""); after != before {
			t.Errorf("ruleset after RemoveRules differs from before kube-proxy's tables:\n--- before\n%s--- after\n%s", before, after)
		}
		if err := RemoveRules(context.Background()); err != nil {
			t.Errorf("RemoveRules with no tables left: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
