// Package podnet makes the device's default pod network from its Node's
// spec.podCIDRs (docs/pod-network.md): the owner's choice of mode, the
// conflist (bridge + host-local over the podCIDRs + portmap) and the
// masquerade of traffic leaving the cluster in evelet's own nftables table.
package podnet

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/lf-edge/evelet/internal/atomicfile"
)

// The owner's config items (EdgeDevConfig configItems).
const (
	// ItemMode chooses the default pod network: ModeConflist or ModePodCIDR.
	ItemMode = "evelet.pod-network"
	// ItemClusterCIDR lists the cluster's whole pod network (one CIDR per
	// family); traffic from device pods to it is not masqueraded.
	ItemClusterCIDR = "evelet.pod-network.cluster-cidr"
	// ItemHostGW ("true"/"false", default false), in podcidr mode, has the
	// agent route other nodes' podCIDRs via their InternalIPs on the
	// device's own link (hostgw.go).
	ItemHostGW = "evelet.pod-network.host-gw"

	// ModeConflist uses the owner's conflist (--cni-default-network).
	ModeConflist = "conflist"
	// ModePodCIDR has evelet write the default network from the Node.
	ModePodCIDR = "podcidr"
)

// Names of what ModePodCIDR makes on the device.
const (
	// NetworkName is the CNI network name of the written conflist.
	NetworkName = "evelet-podcidr"
	// ConflistFile is its file name in the runtime's CNI conf dir. It sorts
	// after 00-evelet.conflist, which stays the runtime's network.
	ConflistFile = NetworkName + ".conflist"
	// Bridge is the pods' bridge (at most 15 bytes, a Linux ifname).
	Bridge = "evelet-pod0"
)

// Settings are the owner's choices.
type Settings struct {
	Mode         string
	ClusterCIDRs []netip.Prefix
	HostGW       bool
}

// FromConfigItems reads the owner's items. A value that does not parse is
// refused whole (an error naming the item) and its default kept.
func FromConfigItems(items map[string]string) (Settings, []error) {
	s := Settings{Mode: ModeConflist}
	var errs []error
	if v, ok := items[ItemMode]; ok {
		switch v = strings.TrimSpace(v); v {
		case ModeConflist, ModePodCIDR:
			s.Mode = v
		default:
			errs = append(errs, fmt.Errorf("config item %s=%q refused: want %q or %q", ItemMode, v, ModeConflist, ModePodCIDR))
		}
	}
	if v, ok := items[ItemClusterCIDR]; ok && strings.TrimSpace(v) != "" {
		cidrs, err := parseCIDRs(strings.Split(v, ","))
		if err != nil {
			errs = append(errs, fmt.Errorf("config item %s=%q refused: %w", ItemClusterCIDR, v, err))
		} else {
			s.ClusterCIDRs = cidrs
		}
	}
	if v, ok := items[ItemHostGW]; ok {
		switch v = strings.TrimSpace(v); v {
		case "true", "false":
			s.HostGW = v == "true"
		default:
			errs = append(errs, fmt.Errorf("config item %s=%q refused: want \"true\" or \"false\"", ItemHostGW, v))
		}
	}
	return s, errs
}

// parseCIDRs parses network prefixes (host bits must be zero: a typo such
// as 10.244.1.0/16 is refused rather than guessed at).
func parseCIDRs(in []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, c := range in {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, err
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("%s has host bits set (the network is %s)", c, p.Masked())
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no CIDR")
	}
	return out, nil
}

// PodCIDRs are the node's pod ranges: spec.podCIDRs, else spec.podCIDR
// (clusters before dual stack set only that); none when the cluster does
// not allocate node CIDRs.
func PodCIDRs(n *corev1.Node) ([]netip.Prefix, error) {
	list := n.Spec.PodCIDRs
	if len(list) == 0 && n.Spec.PodCIDR != "" {
		list = []string{n.Spec.PodCIDR}
	}
	if len(list) == 0 {
		return nil, nil
	}
	cidrs, err := parseCIDRs(list)
	if err != nil {
		return nil, fmt.Errorf("node %s: podCIDRs %v: %w", n.Name, list, err)
	}
	if len(cidrs) > 2 || (len(cidrs) == 2 && cidrs[0].Addr().Is4() == cidrs[1].Addr().Is4()) {
		return nil, fmt.Errorf("node %s: podCIDRs %v: want one per family", n.Name, list)
	}
	return cidrs, nil
}

// WaitPodCIDRs reads the node until it has podCIDRs or timeout passes (the
// controller-manager sets them shortly after the Node is created). It
// returns none, without error, when the Node is there but has none by then.
func WaitPodCIDRs(ctx context.Context, c kubernetes.Interface, node string, interval, timeout time.Duration) ([]netip.Prefix, error) {
	var cidrs []netip.Prefix
	var lastErr error
	err := wait.PollUntilContextTimeout(ctx, interval, timeout, true, func(ctx context.Context) (bool, error) {
		n, err := c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			lastErr = err // not registered yet, or the apiserver is away: ask again
			return false, nil
		}
		lastErr = nil
		cidrs, err = PodCIDRs(n)
		if err != nil {
			return false, err
		}
		return len(cidrs) > 0, nil
	})
	switch {
	case len(cidrs) > 0:
		return cidrs, nil
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case lastErr != nil:
		return nil, fmt.Errorf("node %s: %w", node, lastErr)
	case wait.Interrupted(err):
		return nil, nil // the cluster allocates no node CIDRs
	}
	return nil, err
}

// Network is the default pod network of ModePodCIDR.
type Network struct {
	PodCIDRs []netip.Prefix
	// IPAMDir is host-local's data dir (under evelet's state dir).
	IPAMDir string
}

// Conflist renders the network: one host-local range per family, each
// with its default route; the bridge does no masquerade of its own (see
// Masquerade), portmap serves hostPort.
func (n Network) Conflist() ([]byte, error) {
	if len(n.PodCIDRs) == 0 {
		return nil, fmt.Errorf("pod network: no podCIDR")
	}
	if n.IPAMDir == "" || !filepath.IsAbs(n.IPAMDir) {
		return nil, fmt.Errorf("pod network: IPAM dir %q is not absolute", n.IPAMDir)
	}
	type obj = map[string]any
	var ranges [][]obj
	var routes []obj
	for _, p := range n.PodCIDRs {
		ranges = append(ranges, []obj{{"subnet": p.String()}})
		def := "0.0.0.0/0"
		if p.Addr().Is6() {
			def = "::/0"
		}
		routes = append(routes, obj{"dst": def})
	}
	conf := obj{
		"cniVersion": "1.0.0",
		"name":       NetworkName,
		"plugins": []obj{
			{
				"type":        "bridge",
				"bridge":      Bridge,
				"isGateway":   true,
				"hairpinMode": true,
				// The plugin's own masquerade covers everything outside
				// the pod's subnet, other nodes' pods included, which
				// would hide pod addresses from them.
				"ipMasq": false,
				"ipam": obj{
					"type":    "host-local",
					"ranges":  ranges,
					"routes":  routes,
					"dataDir": n.IPAMDir,
				},
			},
			{"type": "portmap", "capabilities": obj{"portMappings": true}},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// WriteConflist writes the conflist into confDir (temp-then-rename) and
// returns its path.
func (n Network) WriteConflist(confDir string) (string, error) {
	b, err := n.Conflist()
	if err != nil {
		return "", err
	}
	path := filepath.Join(confDir, ConflistFile)
	if err := atomicfile.WriteFile(path, b, 0o644); err != nil {
		return "", fmt.Errorf("pod network: %w", err)
	}
	return path, nil
}
