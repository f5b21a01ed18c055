package vm

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// cniDNSNetwork answers Setup with DNS servers from "the CNI result".
type cniDNSNetwork struct{ noNetwork }

var cniDNS = []netip.Addr{netip.MustParseAddr("192.0.2.53")}

func (cniDNSNetwork) Setup(context.Context, string, PodMeta) (*Attachment, error) {
	return &Attachment{DNS: cniDNS}, nil
}

// TestSandboxDNSFromPodConfig (issue 17): the guest is offered the pod's
// DNS servers from the kubelet (the node-local DNS for ClusterFirst), not
// the CNI result's; IPv6 servers, which DHCPv4 cannot carry, are dropped;
// a pod without DNS servers keeps the CNI result's.
func TestSandboxDNSFromPodConfig(t *testing.T) {
	b := lightBackend(t, slowSupervisor(0))
	b.net = cniDNSNetwork{}
	ctx := context.Background()
	for _, c := range []struct {
		name    string
		servers []string
		want    []netip.Addr
	}{
		{"cluster-first", []string{"169.254.20.10", "fd00::10"}, []netip.Addr{netip.MustParseAddr("169.254.20.10")}},
		{"no-servers", nil, cniDNS},
	} {
		req := sandboxReq(c.name)
		req.Config.DnsConfig = &runtimeapi.DNSConfig{Servers: c.servers, Searches: []string{"default.svc.cluster.local"}}
		resp, err := b.RunPodSandbox(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		sb, err := b.store.sandbox(resp.PodSandboxId)
		if err != nil {
			t.Fatal(err)
		}
		if sb.Net == nil || !slices.Equal(sb.Net.DNS, c.want) {
			t.Errorf("%s: guest's DNS servers %v, want %v", c.name, sb.Net, c.want)
		}
	}
}
