package vmnet

import (
	"context"
	"net"
	"reflect"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"

	"github.com/lf-edge/evelet/cni/antispoof"
)

// TestGuestGuardEqualsEVENIs: a VM NIC's anti-spoofing rules are eve-ni's
// (cni/antispoof): ARP must carry the NIC's MAC as sender hardware
// address as well as its IP, and 0.0.0.0 is a source only for a DHCP
// client's UDP 68->67. The rules the kernel holds for the tap are compared
// with the builder's, installed beside them in the sandbox namespace.
func TestGuestGuardEqualsEVENIs(t *testing.T) {
	e := newEnv(t, "10.245.10.0/24")
	id := "h5-guard-" + randHex(4)
	ctx := context.Background()
	t.Cleanup(func() { e.net.Teardown(ctx, id) })
	att, err := e.net.Setup(ctx, id, PodMeta{Namespace: "default", Name: "guard", UID: "u"})
	if err != nil {
		t.Fatal(err)
	}
	nic := att.NICs[0]
	nsh, err := netns.GetFromPath(att.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(nsh)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseLasting()
	ref := c.AddTable(&nftables.Table{Family: nftables.TableFamilyBridge, Name: "h5_reference"})
	policy := nftables.ChainPolicyAccept
	rch := c.AddChain(&nftables.Chain{Name: "ref", Table: ref, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityFilter, Policy: &policy})
	mac, _ := net.ParseMAC(nic.MAC)
	var ips []net.IP
	for _, p := range nic.IPs {
		ips = append(ips, p.Addr().AsSlice())
	}
	if err := antispoof.AddRules(c, ref, rch, nic.Tap, mac, ips); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	exprs := func(table, chain string) [][]expr.Any {
		rs, err := c.GetRules(&nftables.Table{Family: nftables.TableFamilyBridge, Name: table}, &nftables.Chain{Name: chain})
		if err != nil {
			t.Fatal(err)
		}
		var out [][]expr.Any
		for _, r := range rs {
			out = append(out, r.Exprs)
		}
		return out
	}
	got, want := exprs(guardTable, "from_guest"), exprs("h5_reference", "ref")
	if len(want) != 7 || !reflect.DeepEqual(got, want) {
		t.Fatalf("the VM NIC's guard has %d rules, eve-ni's builder %d for the same tap, MAC and IP; they differ:\n got %v\nwant %v", len(got), len(want), got, want)
	}
}
