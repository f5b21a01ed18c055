package vmnet

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// metaPlugin stands in for a meta plugin (Multus, evelet-cni): eth0 comes
// from the bridge plugin, whose result is the only one it returns; it also
// attaches net1 (a veth with an address, its peer on the host) that its
// result does not list.
const metaPlugin = `#!/bin/sh
set -e
conf=$(cat)
if [ "$CNI_COMMAND" != ADD ]; then
	echo "$conf" | /usr/lib/cni/bridge
	exit
fi
res=$(echo "$conf" | /usr/lib/cni/bridge)
peer=h8u$(echo "$CNI_CONTAINERID" | cut -c4-12)
nsenter --net="$CNI_NETNS" ip link add net1 type veth peer name "$peer" >&2
nsenter --net="$CNI_NETNS" ip link set "$peer" netns 1 >&2
nsenter --net="$CNI_NETNS" ip addr add 10.245.21.7/24 dev net1 >&2
nsenter --net="$CNI_NETNS" ip link set net1 up >&2
echo "$res"
`

// TestSecondaryInterfaceOutsideTheResultBecomesANIC: a meta plugin's
// secondary network, absent from its CNI result, still becomes a guest NIC
// with its address; Teardown leaves nothing.
func TestSecondaryInterfaceOutsideTheResultBecomesANIC(t *testing.T) {
	e := newEnv(t, "10.245.20.0/24")
	bin := filepath.Join(e.dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "h8-meta"), []byte(metaPlugin), 0o755); err != nil {
		t.Fatal(err)
	}
	type obj = map[string]any
	b, _ := json.Marshal(obj{"cniVersion": "1.0.0", "name": "h5-vmnet-test", "plugins": []obj{{
		"type": "h8-meta", "bridge": e.bridge, "isGateway": true,
		"ipam": obj{"type": "host-local", "ranges": [][]obj{{{"subnet": e.subnet.String()}}},
			"routes": []obj{{"dst": "0.0.0.0/0"}}, "dataDir": e.ipamDir},
	}}})
	// 00- sorts before newEnv's conflist.
	if err := os.WriteFile(filepath.Join(e.dir, "net.d", "00-h8-meta.conflist"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	e.net.cfg.CNIBinDirs = append([]string{bin}, e.net.cfg.CNIBinDirs...)

	id := "h8-" + randHex(6)
	ctx := context.Background()
	t.Cleanup(func() { e.net.Teardown(ctx, id) })
	att, err := e.net.Setup(ctx, id, PodMeta{Namespace: "default", Name: "vm-meta", UID: "uid-h8"})
	if err != nil {
		t.Fatal(err)
	}
	if len(att.NICs) != 2 {
		t.Fatalf("NICs %+v: want eth0 and net1", att.NICs)
	}
	eth0, net1 := att.NICs[0], att.NICs[1]
	if eth0.PodIfName != "eth0" || len(eth0.IPs) != 1 || !e.subnet.Contains(eth0.IPs[0].Addr()) || !eth0.Gateway.IsValid() {
		t.Errorf("eth0 NIC %+v: want an address in %s and the gateway", eth0, e.subnet)
	}
	if net1.PodIfName != "net1" || len(net1.IPs) != 1 || net1.IPs[0] != netip.MustParsePrefix("10.245.21.7/24") || net1.Gateway.IsValid() {
		t.Errorf("net1 NIC %+v: want 10.245.21.7/24 and no gateway", net1)
	}
	if eth0.Tap == net1.Tap || eth0.Bridge == net1.Bridge || eth0.MAC == net1.MAC {
		t.Errorf("NICs share a tap, bridge or MAC: %+v", att.NICs)
	}
	// net1 is on its bridge without its address (the guest holds it).
	h := nsHandle(t, att.Netns)
	l, err := h.LinkByName("net1")
	if err != nil {
		t.Fatal(err)
	}
	if br, err := h.LinkByIndex(l.Attrs().MasterIndex); err != nil || br.Attrs().Name != net1.Bridge {
		t.Errorf("net1 master %v (%v), want %s", br, err, net1.Bridge)
	}
	if a, _ := h.AddrList(l, 2 /* AF_INET */); len(a) != 0 {
		t.Errorf("net1 still has %v", a)
	}
	if err := e.net.Teardown(ctx, id); err != nil {
		t.Fatal(err)
	}
	e.assertClean(id)
}
