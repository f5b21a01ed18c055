package podnet

import (
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/lf-edge/evelet/internal/netnstest"
)

// TestRemoveBridge, in a throwaway network namespace: the bridge goes when
// it has no port, stays (with the reason) while a port is on it, and a
// link of that name that is not a bridge is never deleted.
func TestRemoveBridge(t *testing.T) {
	netnstest.Run(t, func() { testRemoveBridge(t) })
}

func testRemoveBridge(t *testing.T) {
	if err := RemoveBridge(); err != nil {
		t.Fatalf("no bridge: %v", err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: Bridge}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	port := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "evtest-p0", MasterIndex: mustIndex(t, Bridge)}, PeerName: "evtest-p1"}
	if err := netlink.LinkAdd(port); err != nil {
		t.Fatal(err)
	}
	if err := RemoveBridge(); err == nil || !strings.Contains(err.Error(), "still has port evtest-p0") {
		t.Fatalf("bridge with a port: %v", err)
	}
	if _, err := netlink.LinkByName(Bridge); err != nil {
		t.Fatalf("bridge with a port deleted: %v", err)
	}
	netlink.LinkDel(port)
	if err := RemoveBridge(); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(Bridge); err == nil {
		t.Fatal("empty bridge kept")
	}
	other := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: Bridge}, PeerName: "evtest-p2"}
	if err := netlink.LinkAdd(other); err != nil {
		t.Fatal(err)
	}
	if err := RemoveBridge(); err == nil || !strings.Contains(err.Error(), "not the bridge") {
		t.Fatalf("a veth named %s: %v", Bridge, err)
	}
	if _, err := netlink.LinkByName(Bridge); err != nil {
		t.Fatalf("a veth named %s was deleted: %v", Bridge, err)
	}
}

func mustIndex(t *testing.T, name string) int {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}
