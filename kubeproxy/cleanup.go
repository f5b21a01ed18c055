package kubeproxy

import (
	"context"
	"errors"
	"fmt"

	"sigs.k8s.io/knftables"
)

// RemoveRules deletes kube-proxy's nftables tables in the caller's network
// namespace, and nothing else: what the node made for Services goes when
// it leaves. It is not `kube-proxy --cleanup`, which also flushes every
// IPVS service of the namespace and rewrites iptables' nat table looking
// for chains of the other modes: none of that is evelet's. A table that is
// not there is not an error.
func RemoveRules(ctx context.Context) error {
	var errs []error
	for _, t := range Tables {
		nft, err := knftables.New(knftables.Family(t.Family), t.Name)
		if err != nil {
			errs = append(errs, fmt.Errorf("kube-proxy rules (%s %s): %w", t.Family, t.Name, err))
			continue
		}
		tx := nft.NewTransaction()
		tx.Delete(&knftables.Table{})
		if err := nft.Run(ctx, tx); err != nil && !knftables.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("kube-proxy rules (%s %s): %w", t.Family, t.Name, err))
		}
	}
	return errors.Join(errs...)
}
