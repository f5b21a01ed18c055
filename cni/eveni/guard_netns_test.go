package eveni_test

// Anti-spoofing on the NI bridge: the real plugin through libcni on an
// evesim Local NI; one pod sends forged frames from a raw socket, a second
// pod on the same bridge captures what the bridge floods to it.

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/nftables"
	"github.com/lf-edge/evelet/cni/eveni"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/wait"
)

// inNetns runs f with the calling thread in the named netns.
func inNetns(t *testing.T, name string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(err)
		}
	}()
	f()
}

// packetSocket opens a raw AF_PACKET socket on ifname inside netns name.
func packetSocket(t *testing.T, name, ifname string) (fd, ifindex int) {
	t.Helper()
	inNetns(t, name, func() {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			t.Fatal(err)
		}
		proto := int(htons(unix.ETH_P_ALL))
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, proto); err != nil {
			t.Fatal(err)
		}
		ifindex = ifi.Index
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifindex}); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { unix.Close(fd) })
	return fd, ifindex
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

var bcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func ethHdr(src net.HardwareAddr, etype uint16) []byte {
	b := append(append([]byte{}, bcast...), src...)
	return binary.BigEndian.AppendUint16(b, etype)
}

// udpFrame is a broadcast IPv4/UDP frame carrying payload.
func udpFrame(srcMAC net.HardwareAddr, src net.IP, payload string) []byte {
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	copy(ip[12:], src.To4())
	copy(ip[16:], net.IPv4bcast.To4())
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := make([]byte, 8)
	binary.BigEndian.PutUint16(udp[0:], 9999)
	binary.BigEndian.PutUint16(udp[2:], 9999)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	return append(append(append(ethHdr(srcMAC, unix.ETH_P_IP), ip...), udp...), payload...)
}

// garp is a gratuitous ARP request: sha claims spa.
func garp(srcMAC net.HardwareAddr, spa net.IP) []byte {
	a := []byte{0, 1, 8, 0, 6, 4, 0, 1}
	a = append(a, srcMAC...)
	a = append(a, spa.To4()...)
	a = append(a, 0, 0, 0, 0, 0, 0)
	a = append(a, spa.To4()...)
	return append(ethHdr(srcMAC, unix.ETH_P_ARP), a...)
}

// capture collects every frame arriving on a packet socket.
type capture struct {
	mu     sync.Mutex
	frames [][]byte
}

func (c *capture) run(fd int, stop <-chan struct{}) {
	tv := unix.Timeval{Usec: 200000}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	buf := make([]byte, 2048)
	for {
		select {
		case <-stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return // socket closed
		}
		c.mu.Lock()
		c.frames = append(c.frames, slices.Clone(buf[:n]))
		c.mu.Unlock()
	}
}

func (c *capture) seen(match func([]byte) bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.ContainsFunc(c.frames, match)
}

func hasPayload(p string) func([]byte) bool {
	return func(f []byte) bool { return bytes.Contains(f, []byte(p)) }
}

// isGARP matches an ARP frame whose sender claims spa.
func isGARP(spa net.IP) func([]byte) bool {
	return func(f []byte) bool {
		return len(f) >= 42 && binary.BigEndian.Uint16(f[12:]) == unix.ETH_P_ARP && net.IP(f[28:32]).Equal(spa)
	}
}

func TestAntiSpoofingLocalNI(t *testing.T) {
	e := newEnv(t, nil)
	l := e.list("shop floor", "")
	p1, p2 := e.pod("sp1"), e.pod("sp2")
	r1 := rt(p1, "net1", map[string]any{"mac": "02:97:00:00:00:51"})
	r2 := rt(p2, "net1", nil)
	res1, err := e.add(l, r1)
	if err != nil {
		t.Fatal(err)
	}
	defer e.del(l, r1)
	res2, err := e.add(l, r2)
	if err != nil {
		t.Fatal(err)
	}
	defer e.del(l, r2)
	mac1, _ := net.ParseMAC(res1.Interfaces[1].Mac)
	ip1, ip2 := res1.IPs[0].Address.IP, res2.IPs[0].Address.IP
	gw := net.ParseIP("10.97.1.1")
	veth1 := eveni.HostVethName(r1.ContainerID, r1.IfName)

	// Legitimate traffic still flows.
	ping(t, p1, ip2.String())
	ping(t, p1, gw.String())
	ping(t, p2, ip1.String())
	if err := e.cni.CheckNetworkList(context.Background(), l, r1); err != nil {
		t.Fatalf("CHECK with the rules in place: %v", err)
	}

	sfd, sidx := packetSocket(t, p1, "net1")
	rfd, _ := packetSocket(t, p2, "net1")
	var c capture
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { c.run(rfd, stop); close(done) }()
	t.Cleanup(func() { close(stop); <-done }) // before the socket closes
	send := func(f []byte) {
		t.Helper()
		if err := unix.Sendto(sfd, f, 0, &unix.SockaddrLinklayer{Ifindex: sidx, Halen: 6, Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}); err != nil {
			t.Fatalf("sending from the pod: %v", err)
		}
	}
	// markerAfter sends the forged frame, then legitimate markers until
	// one arrives at the other pod: by then the forged frame, sent first
	// on the same path, would have arrived too.
	n := 0
	markerAfter := func(forged []byte) {
		t.Helper()
		send(forged)
		n++
		marker := "marker-" + string(rune('a'+n))
		err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
			send(udpFrame(mac1, ip1, marker))
			return c.seen(hasPayload(marker)), nil
		})
		if err != nil {
			t.Fatalf("legitimate marker %s from %s never reached the other pod", marker, ip1)
		}
	}
	otherMAC := net.HardwareAddr{0x02, 0x97, 0, 0, 0, 0x99}
	cases := []struct {
		name   string
		frame  []byte
		arrive func([]byte) bool
	}{
		{"IPv4 from the gateway's address", udpFrame(mac1, gw, "spoof-gw"), hasPayload("spoof-gw")},
		{"IPv4 from the other pod's address", udpFrame(mac1, ip2, "spoof-pod"), hasPayload("spoof-pod")},
		{"IPv4 from 0.0.0.0, not DHCP", udpFrame(mac1, net.IPv4zero, "spoof-zero"), hasPayload("spoof-zero")},
		{"gratuitous ARP for the gateway", garp(mac1, gw), isGARP(gw)},
		{"frame with another source MAC", udpFrame(otherMAC, ip1, "spoof-mac"), hasPayload("spoof-mac")},
		{"ARP with another sender MAC", func() []byte { f := garp(mac1, ip1); copy(f[22:], otherMAC); return f }(),
			func(f []byte) bool { return isGARP(ip1)(f) && bytes.Equal(f[22:28], otherMAC) }},
	}
	for _, k := range cases {
		markerAfter(k.frame)
		if c.seen(k.arrive) {
			t.Errorf("%s: reached the other pod", k.name)
		}
	}
	// The pod's own gratuitous ARP is fine.
	markerAfter(garp(mac1, ip1))
	if !c.seen(isGARP(ip1)) {
		t.Errorf("the pod's own gratuitous ARP did not reach the other pod")
	}

	// Without the rules the same forged frame does arrive (the check
	// above can fail), and CHECK notices the missing rules.
	nc, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	nc.FlushChain(&nftables.Chain{Name: veth1, Table: &nftables.Table{Family: nftables.TableFamilyBridge, Name: eveni.GuardTable}})
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := e.cni.CheckNetworkList(context.Background(), l, r1); err == nil {
		t.Errorf("CHECK passed without the anti-spoofing rules")
	}
	markerAfter(udpFrame(mac1, gw, "unguarded-gw"))
	if !c.seen(hasPayload("unguarded-gw")) {
		t.Errorf("without rules the forged frame did not arrive either: the test proves nothing")
	}

	// DEL removes exactly that attachment's rules, also with the netns gone.
	e.del(l, r1)
	chains, err := eveni.GuardChains()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(chains, veth1) {
		t.Errorf("DEL left the rules of %s: %v", veth1, chains)
	}
	veth2 := eveni.HostVethName(r2.ContainerID, r2.IfName)
	if !slices.Contains(chains, veth2) {
		t.Errorf("DEL of one pod removed the other's rules: %v", chains)
	}
	e.del(l, r1)
	if err := netns.DeleteNamed(p2); err != nil {
		t.Fatal(err)
	}
	e.del(l, r2)
	if chains, _ = eveni.GuardChains(); len(chains) != 0 {
		t.Errorf("rules left after DELs: %v", chains)
	}
}

// TestAntiSpoofingGCAfterLostVeth: rules whose host veth is gone without a
// DEL (a crash, a reboot) go at the next CNI GC, even one that lists the
// attachment as valid (another network's GC cannot know it).
func TestAntiSpoofingGCAfterLostVeth(t *testing.T) {
	e := newEnv(t, nil)
	l := e.list("ext", `,"ipam":{"type":"static"}`)
	p := e.pod("gcv")
	r := rt(p, "net1", map[string]any{"ips": []string{"192.168.97.34/24"}})
	if _, err := e.add(l, r); err != nil {
		t.Fatal(err)
	}
	defer e.del(l, r)
	veth := eveni.HostVethName(r.ContainerID, r.IfName)
	if chains, _ := eveni.GuardChains(); !slices.Contains(chains, veth) {
		t.Fatalf("ADD on a Switch NI with static IPAM installed no rules: %v", chains)
	}
	if err := netns.DeleteNamed(p); err != nil {
		t.Fatal(err)
	}
	// The veth goes with the netns, asynchronously.
	if err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		_, err := net.InterfaceByName(veth)
		return err != nil, nil
	}); err != nil {
		t.Fatalf("host veth %s outlived its netns", veth)
	}
	if err := e.cni.GCNetworkList(context.Background(), l, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: r.ContainerID, IfName: r.IfName}}}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if chains, _ := eveni.GuardChains(); slices.Contains(chains, veth) {
		t.Errorf("GC kept the rules of the vanished %s: %v", veth, chains)
	}
}

// TestAntiSpoofingInstallFailureUndone: when the rules cannot be installed
// (here the kernel refuses: a regular chain of the host veth's name is in
// eve-ni's table, and a base chain cannot replace it), ADD fails with an
// error that names the veth and the table, and leaves nothing: no pod
// interface, no host veth, no address allocated. The chain it did not make
// is left alone; once it is gone, the runtime's retry succeeds.
func TestAntiSpoofingInstallFailureUndone(t *testing.T) {
	e := newEnv(t, nil)
	l := e.list("shop floor", "")
	p := e.pod("fail")
	r := rt(p, "net1", nil)
	veth := eveni.HostVethName(r.ContainerID, r.IfName)

	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyBridge, Name: eveni.GuardTable})
	c.AddChain(&nftables.Chain{Name: veth, Table: tbl}) // no hook: a regular chain
	if err := c.Flush(); err != nil {
		t.Fatalf("creating the blocking chain: %v", err)
	}
	blocking := true
	unblock := func() {
		if blocking {
			c.DelChain(&nftables.Chain{Name: veth, Table: tbl})
			if err := c.Flush(); err != nil {
				t.Errorf("removing the blocking chain: %v", err)
			}
			blocking = false
		}
	}
	t.Cleanup(unblock)

	_, err = e.add(l, r)
	if err == nil || !strings.Contains(err.Error(), "installing the anti-spoofing rules for "+veth) || !strings.Contains(err.Error(), eveni.GuardTable) {
		t.Fatalf("ADD with the rules refused: %v, want the install error naming %s and %s", err, veth, eveni.GuardTable)
	}
	if out, _ := inPod(p, "ip", "-o", "link"); strings.Contains(out, "net1") {
		t.Errorf("failed ADD left net1 in the pod: %s", out)
	}
	hostVethGone(t, r)
	if a := allocations(t, e); strings.Contains(a, r.ContainerID) {
		t.Errorf("failed ADD left an allocation: %s", a)
	}

	if chains, _ := eveni.GuardChains(); !slices.Contains(chains, veth) {
		t.Errorf("the failed ADD removed a chain it did not make: %v", chains)
	}

	unblock()
	res, err := e.add(l, r)
	if err != nil {
		t.Fatalf("retry after the failed ADD: %v", err)
	}
	defer e.del(l, r)
	if len(res.IPs) != 1 || !strings.HasPrefix(res.IPs[0].Address.IP.String(), "10.97.1.20") {
		t.Errorf("retry got %v, want an address of the reserved range", res.IPs)
	}
	if chains, _ := eveni.GuardChains(); !slices.Contains(chains, veth) {
		t.Errorf("retry installed no rules: %v", chains)
	}
}
