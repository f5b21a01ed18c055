package nodedns

import (
	"net"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/lf-edge/evelet/internal/netnstest"
)

func TestLinkCreatedIdempotentAndRemoved(t *testing.T) {
	netnstest.Run(t, func() {
		if err := EnsureLink(DefaultLinkName, DefaultAddress); err != nil {
			t.Fatal(err)
		}
		link, err := netlink.LinkByName(DefaultLinkName)
		if err != nil {
			t.Fatal(err)
		}
		// A stale address from an older configuration goes.
		stale, _ := netlink.ParseAddr("169.254.20.11/32")
		if err := netlink.AddrAdd(link, stale); err != nil {
			t.Fatal(err)
		}
		if err := EnsureLink(DefaultLinkName, DefaultAddress); err != nil {
			t.Fatal(err)
		}
		addrs, _ := netlink.AddrList(link, netlink.FAMILY_ALL)
		var v4 []string
		for _, a := range addrs {
			if a.IP.To4() != nil {
				v4 = append(v4, a.IPNet.String())
			}
		}
		if len(v4) != 1 || v4[0] != "169.254.20.10/32" {
			t.Fatalf("addresses %v, want only 169.254.20.10/32", addrs)
		}
		if link, _ = netlink.LinkByName(DefaultLinkName); link.Attrs().Flags&net.FlagUp == 0 {
			t.Fatal("link not up")
		}
		if err := RemoveLink(DefaultLinkName); err != nil {
			t.Fatal(err)
		}
		if _, err := netlink.LinkByName(DefaultLinkName); err == nil {
			t.Fatal("link still there after RemoveLink")
		}
		if err := RemoveLink(DefaultLinkName); err != nil {
			t.Fatalf("second remove: %v", err)
		}
	})
}

func TestLinkNotOursIsLeftAlone(t *testing.T) {
	netnstest.Run(t, func() {
		la := netlink.NewLinkAttrs()
		la.Name = DefaultLinkName
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			t.Fatal(err)
		}
		if err := EnsureLink(DefaultLinkName, DefaultAddress); err == nil {
			t.Fatal("adopted a bridge")
		}
		if err := RemoveLink(DefaultLinkName); err == nil {
			t.Fatal("removed a bridge")
		}
		if _, err := netlink.LinkByName(DefaultLinkName); err != nil {
			t.Fatal("bridge gone")
		}
	})
}
