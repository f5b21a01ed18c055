package vmnet

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"sort"

	"github.com/containernetworking/cni/libcni"
	cnitypes "github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/api/resource"
)

// podIfName is the first interface's name, as containerd's CRI names it.
const podIfName = "eth0"

// Annotations and capability names containerd's CRI uses; a NAD-aware meta
// plugin (Multus) reads the pod annotations capability.
const (
	capPodAnnotations = "io.kubernetes.cri.pod-annotations"
	annIngressBW      = "kubernetes.io/ingress-bandwidth"
	annEgressBW       = "kubernetes.io/egress-bandwidth"
)

// cniIface is one interface CNI created in the sandbox.
type cniIface struct {
	name    string
	ips     []netip.Prefix
	gateway netip.Addr // IPv4 only
}

type cniResult struct {
	ifaces []cniIface
	dns    []netip.Addr
}

// loadConfList reads the pod network: the first configuration file in
// lexical order, as containerd's CRI (max_conf_num = 1) does.
func loadConfList(dir string) (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(dir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil, fmt.Errorf("vmnet: read CNI conf dir %s: %w", dir, err)
	}
	sort.Strings(files)
	for _, f := range files {
		if list, err := libcni.ConfListFromFile(f); err == nil && len(list.Plugins) > 0 {
			return list, nil
		}
		if conf, err := libcni.ConfFromFile(f); err == nil {
			if list, err := libcni.ConfListFromConf(conf); err == nil {
				return list, nil
			}
		}
	}
	return nil, fmt.Errorf("vmnet: no CNI network configuration in %s", dir)
}

func (n *Network) cniConfig() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir(n.cfg.CNIBinDirs, n.cfg.CacheDir, nil)
}

// runtimeConf carries the same CNI_ARGS and capabilities containerd's CRI
// passes for a container pod, so plugins (and NADs) see a VM pod alike.
func runtimeConf(id, path string, pod PodMeta) *libcni.RuntimeConf {
	caps := map[string]any{
		capPodAnnotations: nonNil(pod.Annotations),
	}
	if len(pod.PortMappings) > 0 {
		caps["portMappings"] = pod.PortMappings
	}
	if bw := bandwidth(pod.Annotations); bw != nil {
		caps["bandwidth"] = bw
	}
	return &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       path,
		IfName:      podIfName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", pod.Namespace},
			{"K8S_POD_NAME", pod.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", id},
			{"K8S_POD_UID", pod.UID},
		},
		CapabilityArgs: caps,
	}
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// bandwidth turns the pod's bandwidth annotations into the CNI bandwidth
// capability (bits per second; burst unlimited, as containerd does).
func bandwidth(ann map[string]string) map[string]uint64 {
	bw := map[string]uint64{}
	if v, ok := ann[annIngressBW]; ok {
		if q, err := resource.ParseQuantity(v); err == nil && q.Value() > 0 {
			bw["ingressRate"] = uint64(q.Value())
			bw["ingressBurst"] = math.MaxInt32
		}
	}
	if v, ok := ann[annEgressBW]; ok {
		if q, err := resource.ParseQuantity(v); err == nil && q.Value() > 0 {
			bw["egressRate"] = uint64(q.Value())
			bw["egressBurst"] = math.MaxInt32
		}
	}
	if len(bw) == 0 {
		return nil
	}
	return bw
}

func (n *Network) cniAdd(ctx context.Context, id, path string, pod PodMeta) (*cniResult, error) {
	list, err := loadConfList(n.cfg.CNIConfDir)
	if err != nil {
		return nil, err
	}
	r, err := n.cniConfig().AddNetworkList(ctx, list, runtimeConf(id, path, pod))
	if err != nil {
		return nil, fmt.Errorf("vmnet: CNI ADD on network %q: %w", list.Name, err)
	}
	res, err := types100.NewResultFromResult(r)
	if err != nil {
		return nil, fmt.Errorf("vmnet: CNI result of network %q: %w", list.Name, err)
	}
	return parseResult(res), nil
}

// parseResult keeps the interfaces CNI put in the sandbox, with their IPs
// and IPv4 gateway, in the result's order.
func parseResult(res *types100.Result) *cniResult {
	out := &cniResult{}
	byIdx := map[int]int{}
	for i, ifc := range res.Interfaces {
		if ifc.Sandbox == "" {
			continue
		}
		byIdx[i] = len(out.ifaces)
		out.ifaces = append(out.ifaces, cniIface{name: ifc.Name})
	}
	var defGW netip.Addr
	for _, r := range res.Routes {
		if ones, _ := r.Dst.Mask.Size(); ones == 0 && r.Dst.IP.To4() != nil && r.GW != nil {
			defGW, _ = netip.AddrFromSlice(r.GW.To4())
		}
	}
	for _, ipc := range res.IPs {
		if ipc.Interface == nil {
			continue
		}
		k, ok := byIdx[*ipc.Interface]
		if !ok {
			continue
		}
		p, ok := prefixOf(ipc.Address)
		if !ok {
			continue
		}
		ifc := &out.ifaces[k]
		ifc.ips = append(ifc.ips, p)
		if p.Addr().Is4() && !ifc.gateway.IsValid() {
			if gw, ok := netip.AddrFromSlice(ipc.Gateway.To4()); ok && ipc.Gateway != nil {
				ifc.gateway = gw
			}
		}
	}
	// A default route without a per-IP gateway goes to the first interface
	// with an IPv4 address (the pod's primary network).
	for i := range out.ifaces {
		if defGW.IsValid() && !out.ifaces[i].gateway.IsValid() && hasV4(out.ifaces[i].ips) {
			out.ifaces[i].gateway = defGW
			break
		}
	}
	for _, s := range res.DNS.Nameservers {
		if a, err := netip.ParseAddr(s); err == nil {
			out.dns = append(out.dns, a)
		}
	}
	return out
}

func hasV4(ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Addr().Is4() {
			return true
		}
	}
	return false
}

func prefixOf(n net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a, ones), true
}

// cniDel runs CNI DEL for every attachment libcni cached for the sandbox,
// with the configuration and arguments cached at ADD time. If there is no
// cache entry but the namespace is there (a crash during ADD), it runs DEL
// with today's configuration so IPAM still lets go of the address.
func (n *Network) cniDel(ctx context.Context, id, path string) error {
	cni := n.cniConfig()
	nsPath := path
	if !isNetns(path) {
		nsPath = "" // plugins then only release what they hold outside it
	}
	atts, err := cni.GetCachedAttachments(id)
	if err != nil {
		return fmt.Errorf("vmnet: read CNI cache of %s: %w", id, err)
	}
	if len(atts) == 0 {
		if nsPath == "" {
			return nil
		}
		list, err := loadConfList(n.cfg.CNIConfDir)
		if err != nil {
			// No configuration: no ADD can have run, nothing to delete.
			n.log.WithError(err).WithField("sandbox", id).Debug("no CNI DEL without a configuration")
			return nil
		}
		if err := cni.DelNetworkList(ctx, list, runtimeConf(id, nsPath, PodMeta{})); err != nil {
			return fmt.Errorf("vmnet: CNI DEL on network %q: %w", list.Name, err)
		}
		return nil
	}
	var errs []error
	for _, a := range atts {
		list, err := libcni.ConfListFromBytes(a.Config)
		if err != nil {
			errs = append(errs, fmt.Errorf("vmnet: cached CNI config of %s: %w", id, err))
			continue
		}
		rt := &libcni.RuntimeConf{
			ContainerID:    id,
			NetNS:          nsPath,
			IfName:         a.IfName,
			Args:           a.CniArgs,
			CapabilityArgs: a.CapabilityArgs,
		}
		if nsPath != "" {
			// The bridge plugin's DEL finds the masquerade rules to drop
			// through the addresses on the pod interface, which the guest
			// now holds: put them back for the DEL.
			if r, err := cni.GetNetworkListCachedResult(list, rt); err == nil && r != nil {
				restoreAddrs(nsPath, r)
			}
		}
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			errs = append(errs, fmt.Errorf("vmnet: CNI DEL on network %q: %w", list.Name, err))
		}
	}
	return errors.Join(errs...)
}

// restoreAddrs re-adds the cached result's addresses to their interfaces in
// the namespace (best effort: DEL proceeds either way).
func restoreAddrs(path string, r cnitypes.Result) {
	res, err := types100.NewResultFromResult(r)
	if err != nil {
		return
	}
	h, err := handleAt(path)
	if err != nil {
		return
	}
	defer h.Close()
	for _, ipc := range res.IPs {
		if ipc.Interface == nil || *ipc.Interface >= len(res.Interfaces) {
			continue
		}
		ifc := res.Interfaces[*ipc.Interface]
		if ifc.Sandbox == "" {
			continue
		}
		l, err := h.LinkByName(ifc.Name)
		if err != nil {
			continue
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ipc.Address.IP, Mask: ipc.Address.Mask}}
		if err := h.AddrAdd(l, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			continue
		}
	}
}
