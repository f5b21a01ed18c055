package nodedns

import (
	"net"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/lf-edge/evelet/eve/pubsub"
)

func TestUpstreamsFromDeviceNetworkStatusManagementPortsFirst(t *testing.T) {
	root := pubsub.Root{Run: t.TempDir()}
	st := pubsub.DeviceNetworkStatus{Ports: []pubsub.NetworkPortStatus{
		{IfName: "eth1", DNSServers: []net.IP{net.ParseIP("192.168.9.1")}},
		{IfName: "eth0", IsMgmt: true, DNSServers: []net.IP{net.ParseIP("10.1.0.1"), net.ParseIP("169.254.20.10"), net.ParseIP("192.168.9.1")}},
	}}
	if err := pubsub.Write(root.DeviceNetworkStatus(), st); err != nil {
		t.Fatal(err)
	}
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver 8.8.8.8\n"), 0o644)
	got := Upstreams(root, resolv, DefaultAddress)
	if want := []string{"10.1.0.1", "192.168.9.1"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("upstreams %v, want %v (management first, each once, never ourselves, resolv.conf unused)", got, want)
	}
}

func TestUpstreamsFallBackToResolvConf(t *testing.T) {
	root := pubsub.Root{Run: t.TempDir()}
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(resolv, []byte("# nim\nsearch example\nnameserver 10.2.0.1\nnameserver 169.254.20.10\nnameserver fe80::1%eth0\nnameserver 10.2.0.1\n"), 0o644)
	// A DeviceNetworkStatus with no DNS servers (ports still on DHCP) is
	// no answer either.
	pubsub.Write(root.DeviceNetworkStatus(), pubsub.DeviceNetworkStatus{Ports: []pubsub.NetworkPortStatus{{IfName: "eth0", IsMgmt: true}}})
	got := Upstreams(root, resolv, DefaultAddress)
	if want := []string{"10.2.0.1"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("upstreams %v, want %v", got, want)
	}
	if got := Upstreams(pubsub.Root{}, "", DefaultAddress); len(got) != 0 {
		t.Fatalf("no sources: %v", got)
	}
}
