package eveni_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lf-edge/evelet/cni/eveni"
	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/vishvananda/netlink"
)

// writeAppNetworkConfig publishes an EVE app's network config as zedmanager
// does (AppMacAddr as encoding/json writes a net.HardwareAddr: base64).
func (e *env) writeAppNetworkConfig(t *testing.T, niUUID string, mac net.HardwareAddr, ip net.IP) {
	t.Helper()
	dir := filepath.Join(e.dir, "run", "zedmanager", "AppNetworkConfig")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]any{"UUIDandVersion": map[string]any{"UUID": "99999999-9999-4999-8999-999999999999", "Version": "1"},
		"DisplayName": "plc", "AppNetAdapterList": []map[string]any{{
			"Name": "eth0", "AppMacAddr": base64.StdEncoding.EncodeToString(mac), "AppIPAddr": ip.String(), "Network": niUUID}}})
	if err := os.WriteFile(filepath.Join(dir, "99999999-9999-4999-8999-999999999999.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestTenantCannotChooseAnotherIdentity: a pod may not take, as its MAC,
// the bridge's, an EVE app's (learned or only configured), another pod's
// or an external host's, nor, on a Switch NI, an address outside the
// owner's range (such as the external host's), nor on a Local NI an app's
// static address that EVE has not seen yet. Nothing stays attached.
func TestTenantCannotChooseAnotherIdentity(t *testing.T) {
	e := newEnv(t, nil)
	appMAC, _ := net.ParseMAC("02:a0:00:00:00:01")
	e.writeAppNetworkConfig(t, e.local.Status.UUID.String(), appMAC, net.ParseIP("10.97.1.200"))
	learnedMAC := "02:a0:00:00:00:02"
	e.local.Status.IPAssignments = map[string]pubsub.AssignedAddrs{learnedMAC: {}}
	if err := e.local.Publish(); err != nil {
		t.Fatal(err)
	}
	br, err := netlink.LinkByName(e.local.Status.BridgeName)
	if err != nil {
		t.Fatal(err)
	}
	local := e.list("shop floor", "")

	// A first pod, on a Local NI: the app's static .200 is skipped.
	p1 := e.pod("id1")
	r1 := rt(p1, "net1", map[string]any{"mac": "02:a0:00:00:00:10"})
	res, err := e.add(local, r1)
	if err != nil {
		t.Fatal(err)
	}
	defer e.del(local, r1)
	if got := res.IPs[0].Address.IP.String(); got != "10.97.1.201" {
		t.Errorf("first pod got %s: the app's static 10.97.1.200 must be skipped", got)
	}
	sw := e.list("ext", `,"ipam":{"type":"static"}`)
	// Learn the external host's MAC on the Switch NI's bridge.
	ps := e.pod("ids")
	rs := rt(ps, "net1", map[string]any{"ips": []string{"192.168.97.31/24"}})
	if _, err := e.add(sw, rs); err != nil {
		t.Fatal(err)
	}
	defer e.del(sw, rs)
	ping(t, ps, e.sw.External.IP.String())
	extMAC := neighbourMAC(t, ps, e.sw.External.IP.String())

	n := 0
	for _, c := range []struct {
		name string
		l    string
		caps map[string]any
		want string
	}{
		{"bridge MAC", "local", map[string]any{"mac": br.Attrs().HardwareAddr.String()}, "is the NI bridge's"},
		{"app MAC from the app network config", "local", map[string]any{"mac": appMAC.String()}, `is EVE app interface "eth0"'s`},
		{"app MAC EVE learned", "local", map[string]any{"mac": learnedMAC}, "is an EVE app's"},
		{"another pod's MAC", "local", map[string]any{"mac": "02:a0:00:00:00:10"}, "02:a0:00:00:00:10"},
		{"an external host's MAC", "switch", map[string]any{"mac": extMAC, "ips": []string{"192.168.97.32/24"}}, "is in use on bridge"},
		{"app's static IP", "local", map[string]any{"ips": []string{"10.97.1.200/24"}}, "used by EVE"},
		{"external host's IP on a Switch NI", "switch", map[string]any{"ips": []string{e.sw.External.String()}}, "outside the range 192.168.97.30-192.168.97.40"},
	} {
		n++
		t.Run(c.name, func(t *testing.T) {
			p := e.pod(fmt.Sprintf("idx%d", n))
			r := rt(p, "net1", c.caps)
			l := local
			if c.l == "switch" {
				l = sw
			}
			_, err := e.add(l, r)
			if err == nil {
				e.del(l, r)
				t.Fatalf("attached with %v", c.caps)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
			hostVethGone(t, r)
			if s := allocations(t, e); strings.Contains(s, r.ContainerID) {
				t.Errorf("refused attachment left an allocation: %s", s)
			}
		})
	}
	if err := e.cni.CheckNetworkList(context.Background(), local, r1); err != nil {
		t.Errorf("the first pod after the refusals: %v", err)
	}
}

// TestSwitchNIWithoutRangeIsDHCPOnly: a Switch NI the owner gave without a
// range takes no static address and no address-less pod.
func TestSwitchNIWithoutRangeIsDHCPOnly(t *testing.T) {
	e := newEnv(t, []eveni.Grant{{NetworkInstance: "ext"}})
	for i, ipam := range []string{`,"ipam":{"type":"static"}`, ""} {
		p := e.pod(fmt.Sprintf("dho%d", i))
		r := rt(p, "net1", map[string]any{"ips": []string{"192.168.97.35/24"}})
		l := e.list("ext", ipam)
		if ipam == "" {
			r.CapabilityArgs = nil
		}
		if _, err := e.add(l, r); err == nil || !strings.Contains(err.Error(), "DHCP only") {
			t.Errorf("ipam %q: %v, want DHCP only", ipam, err)
		}
		hostVethGone(t, r)
	}
}

func neighbourMAC(t *testing.T, netnsName, ip string) string {
	t.Helper()
	out, err := inPod(netnsName, "ip", "neigh", "show", ip)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	for i, w := range f {
		if w == "lladdr" && i+1 < len(f) {
			return f[i+1]
		}
	}
	t.Fatalf("no neighbour entry for %s: %s", ip, out)
	return ""
}

// An IPv6 address asked for on a Local NI (IPv4 only) is refused, never
// silently dropped.
func TestLocalNIRefusesIPv6(t *testing.T) {
	e := newEnv(t, nil)
	p := e.pod("v6")
	r := rt(p, "net1", map[string]any{"ips": []string{"fd00::5/64"}})
	if _, err := e.add(e.list("shop floor", ""), r); err == nil || !strings.Contains(err.Error(), "IPv4 addresses only") {
		t.Fatalf("IPv6 on a Local NI: %v", err)
	}
	hostVethGone(t, r)
}
