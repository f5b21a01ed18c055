package podnet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"sigs.k8s.io/knftables"
)

// Table is evelet's nftables table for the pod network's masquerade, in
// the ip and ip6 families: its own, so nothing of EVE's or kube-proxy's is
// touched, and leaving deletes it whole.
const Table = "evelet-podnet"

// NFT makes the knftables interface of one family's Table
// (knftables.New on a device, knftables.NewFake in tests).
type NFT func(family knftables.Family) (knftables.Interface, error)

// SystemNFT is nft(8) in the caller's network namespace.
func SystemNFT(family knftables.Family) (knftables.Interface, error) {
	return knftables.New(family, Table)
}

// masqueradeRules are the postrouting rules per family: traffic from the
// node's pods to anything but the pods of the cluster (the node's own
// podCIDR, the owner's cluster CIDRs) and multicast leaves with the
// device's address, as the reference bridge plugin's ipMasq does for
// everything outside the pod's own subnet.
func masqueradeRules(podCIDRs, clusterCIDRs []netip.Prefix) map[knftables.Family][]string {
	out := map[knftables.Family][]string{}
	for _, p := range podCIDRs {
		fam, kw, mcast := knftables.IPv4Family, "ip", "224.0.0.0/4"
		if p.Addr().Is6() {
			fam, kw, mcast = knftables.IPv6Family, "ip6", "ff00::/8"
		}
		exempt := []string{p.String()}
		for _, c := range clusterCIDRs {
			if c.Addr().Is4() == p.Addr().Is4() && c != p {
				exempt = append(exempt, c.String())
			}
		}
		exempt = append(exempt, mcast)
		out[fam] = append(out[fam], fmt.Sprintf("%s saddr %s %s daddr != { %s } masquerade",
			kw, p, kw, strings.Join(exempt, ", ")))
	}
	return out
}

// Masquerade replaces evelet's masquerade rules with those for podCIDRs
// (one transaction per family, so a family never has half a rule set).
// A family without a podCIDR has its table removed.
func Masquerade(ctx context.Context, nft NFT, podCIDRs, clusterCIDRs []netip.Prefix) error {
	rules := masqueradeRules(podCIDRs, clusterCIDRs)
	var errs []error
	for _, fam := range []knftables.Family{knftables.IPv4Family, knftables.IPv6Family} {
		rs, ok := rules[fam]
		if !ok {
			errs = append(errs, removeTable(ctx, nft, fam))
			continue
		}
		n, err := nft(fam)
		if err != nil {
			errs = append(errs, fmt.Errorf("pod network masquerade (%s): %w", fam, err))
			continue
		}
		tx := n.NewTransaction()
		tx.Add(&knftables.Table{Comment: knftables.PtrTo("evelet: pod network masquerade")})
		tx.Add(&knftables.Chain{
			Name:     "postrouting",
			Type:     knftables.PtrTo(knftables.NATType),
			Hook:     knftables.PtrTo(knftables.PostroutingHook),
			Priority: knftables.PtrTo(knftables.SNATPriority),
		})
		tx.Flush(&knftables.Chain{Name: "postrouting"})
		for _, r := range rs {
			tx.Add(&knftables.Rule{Chain: "postrouting", Rule: r})
		}
		if err := n.Run(ctx, tx); err != nil {
			errs = append(errs, fmt.Errorf("pod network masquerade (%s): %w", fam, err))
		}
	}
	return errors.Join(errs...)
}

// RemoveMasquerade deletes evelet's table in both families; a table that
// is not there is not an error.
func RemoveMasquerade(ctx context.Context, nft NFT) error {
	return errors.Join(removeTable(ctx, nft, knftables.IPv4Family), removeTable(ctx, nft, knftables.IPv6Family))
}

func removeTable(ctx context.Context, nft NFT, fam knftables.Family) error {
	n, err := nft(fam)
	if err != nil {
		return fmt.Errorf("pod network masquerade (%s): %w", fam, err)
	}
	tx := n.NewTransaction()
	tx.Delete(&knftables.Table{})
	if err := n.Run(ctx, tx); err != nil && !knftables.IsNotFound(err) {
		return fmt.Errorf("pod network masquerade (%s): %w", fam, err)
	}
	return nil
}
