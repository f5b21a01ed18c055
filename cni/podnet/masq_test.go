package podnet

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"
)

// fakes is an NFT over one knftables fake per family.
type fakes map[knftables.Family]*knftables.Fake

func (f fakes) nft(fam knftables.Family) (knftables.Interface, error) {
	if f[fam] == nil {
		f[fam] = knftables.NewFake(fam, Table)
	}
	return f[fam], nil
}

func TestMasqueradeRules(t *testing.T) {
	got := masqueradeRules(prefixes(t, "10.244.21.0/24", "fd00:10:244:15::/64"), prefixes(t, "10.244.0.0/16", "fd00:10:244::/56"))
	want4 := "ip saddr 10.244.21.0/24 ip daddr != { 10.244.21.0/24, 10.244.0.0/16, 224.0.0.0/4 } masquerade"
	want6 := "ip6 saddr fd00:10:244:15::/64 ip6 daddr != { fd00:10:244:15::/64, fd00:10:244::/56, ff00::/8 } masquerade"
	if len(got) != 2 || len(got[knftables.IPv4Family]) != 1 || got[knftables.IPv4Family][0] != want4 ||
		len(got[knftables.IPv6Family]) != 1 || got[knftables.IPv6Family][0] != want6 {
		t.Fatalf("rules %q\nwant %q and %q", got, want4, want6)
	}
	// Without the owner's cluster CIDR only the node's own pods are exempt.
	got = masqueradeRules(prefixes(t, "10.244.21.0/24"), nil)
	if r := got[knftables.IPv4Family]; len(r) != 1 || r[0] != "ip saddr 10.244.21.0/24 ip daddr != { 10.244.21.0/24, 224.0.0.0/4 } masquerade" || len(got) != 1 {
		t.Fatalf("rules %q", got)
	}
}

// nft(8) itself accepts the rules (check mode: nothing is applied).
func TestMasqueradeRulesParseWithNFT(t *testing.T) {
	nftBin, err := exec.LookPath("nft")
	if err != nil {
		t.Fatalf("nft(8) is needed to check the rules' syntax (apt-get install nftables): %v", err)
	}
	f := fakes{}
	if err := Masquerade(context.Background(), f.nft, prefixes(t, "10.244.21.0/24", "fd00:10:244:15::/64"), prefixes(t, "10.244.0.0/16")); err != nil {
		t.Fatal(err)
	}
	for fam, fk := range f {
		if fam == knftables.IPv6Family && !strings.Contains(fk.Dump(), "masquerade") {
			t.Errorf("no ip6 rule:\n%s", fk.Dump())
		}
		cmd := exec.Command(nftBin, "--check", "-f", "-")
		cmd.Stdin = strings.NewReader(fk.Dump())
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("nft --check refuses the %s table: %v\n%s\n%s", fam, err, out, fk.Dump())
		}
	}
}

func TestMasqueradeReplacesAndRemoves(t *testing.T) {
	ctx := context.Background()
	f := fakes{}
	if err := Masquerade(ctx, f.nft, prefixes(t, "10.244.21.0/24", "fd00:10:244:15::/64"), nil); err != nil {
		t.Fatal(err)
	}
	if err := Masquerade(ctx, f.nft, prefixes(t, "10.244.22.0/24"), nil); err != nil {
		t.Fatal(err)
	}
	v4 := f[knftables.IPv4Family].Dump()
	if strings.Contains(v4, "10.244.21.0/24") || strings.Count(v4, "add rule") != 1 || !strings.Contains(v4, "ip saddr 10.244.22.0/24") {
		t.Errorf("ip table after the change:\n%s", v4)
	}
	if f[knftables.IPv6Family].Table != nil {
		t.Errorf("ip6 table kept without an IPv6 podCIDR:\n%s", f[knftables.IPv6Family].Dump())
	}
	ch := f[knftables.IPv4Family].Table.Chains["postrouting"]
	if ch == nil || ch.Type == nil || *ch.Type != knftables.NATType || ch.Hook == nil || *ch.Hook != knftables.PostroutingHook {
		t.Fatalf("chain %+v", ch)
	}
	if err := RemoveMasquerade(ctx, f.nft); err != nil {
		t.Fatal(err)
	}
	if f[knftables.IPv4Family].Table != nil {
		t.Errorf("table left after removal:\n%s", f[knftables.IPv4Family].Dump())
	}
	if err := RemoveMasquerade(ctx, f.nft); err != nil {
		t.Errorf("second removal: %v", err)
	}
}
