package devnet

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// netnsDir is where iproute2 and vishvananda/netns keep named namespaces.
const netnsDir = "/run/netns"

// netnsPath is the bind mount that keeps a named namespace alive.
func netnsPath(name string) string { return filepath.Join(netnsDir, name) }

// createNetNS makes the named namespace without moving this goroutine's
// thread into it for longer than the call: netns.NewNamed switches the
// calling thread, so the thread is locked and switched back, and stays
// locked (to die with the goroutine) should switching back fail.
func createNetNS(name string) (err error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("devnet: current netns: %w", err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if err != nil {
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		return fmt.Errorf("devnet: creating netns %s: %w", name, err)
	}
	ns.Close()
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("devnet: back to the host netns: %w", err)
	}
	runtime.UnlockOSThread()
	return nil
}

// deleteNetNS removes the named namespace's bind mount and file; the
// namespace itself goes when no process is left in it.
func deleteNetNS(name string) error {
	if _, err := os.Stat(netnsPath(name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := netns.DeleteNamed(name); err != nil {
		return fmt.Errorf("devnet: deleting netns %s: %w", name, err)
	}
	return nil
}

// netnsInode identifies a namespace: the inode of its nsfs file, the number
// /proc/<pid>/ns/net shows as "net:[<inode>]".
func netnsInode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// plugDevice creates the veth pair of a device: hostSide on the bridge, the
// other end moved into the namespace as eth0 with addr, lo up, and a
// default route via gw.
// setBridged attaches the link hostSide to bridge, or detaches it from
// any bridge.
func setBridged(hostSide, bridge string, on bool) error {
	l, err := netlink.LinkByName(hostSide)
	if err != nil {
		return fmt.Errorf("devnet: %s: %w", hostSide, err)
	}
	if !on {
		if err := netlink.LinkSetNoMaster(l); err != nil {
			return fmt.Errorf("devnet: detaching %s: %w", hostSide, err)
		}
		return nil
	}
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("devnet: bridge %s: %w", bridge, err)
	}
	if err := netlink.LinkSetMaster(l, br); err != nil {
		return fmt.Errorf("devnet: attaching %s to %s: %w", hostSide, bridge, err)
	}
	return nil
}

func plugDevice(nsName, bridge, hostSide string, addr *net.IPNet, gw net.IP) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("devnet: bridge %s: %w", bridge, err)
	}
	if old, err := netlink.LinkByName(hostSide); err == nil {
		netlink.LinkDel(old) // a leftover of a killed run
	}
	peer := hostSide + "p"
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostSide, MasterIndex: br.Attrs().Index}, PeerName: peer}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("devnet: veth %s: %w", hostSide, err)
	}
	ok := false
	defer func() {
		if !ok {
			netlink.LinkDel(veth)
		}
	}()
	ns, err := netns.GetFromName(nsName)
	if err != nil {
		return fmt.Errorf("devnet: netns %s: %w", nsName, err)
	}
	defer ns.Close()
	pl, err := netlink.LinkByName(peer)
	if err != nil {
		return fmt.Errorf("devnet: veth peer %s: %w", peer, err)
	}
	if err := netlink.LinkSetNsFd(pl, int(ns)); err != nil {
		return fmt.Errorf("devnet: moving %s into %s: %w", peer, nsName, err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		return fmt.Errorf("devnet: %s up: %w", hostSide, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("devnet: netlink in %s: %w", nsName, err)
	}
	defer h.Close()
	in, err := h.LinkByName(peer)
	if err != nil {
		return fmt.Errorf("devnet: %s in %s: %w", peer, nsName, err)
	}
	if err := h.LinkSetName(in, "eth0"); err != nil {
		return fmt.Errorf("devnet: renaming %s: %w", peer, err)
	}
	if err := h.AddrAdd(in, &netlink.Addr{IPNet: addr}); err != nil {
		return fmt.Errorf("devnet: address %s: %w", addr, err)
	}
	if err := h.LinkSetUp(in); err != nil {
		return fmt.Errorf("devnet: eth0 up in %s: %w", nsName, err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("devnet: lo in %s: %w", nsName, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("devnet: lo up in %s: %w", nsName, err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: in.Attrs().Index, Gw: gw}); err != nil {
		return fmt.Errorf("devnet: default route in %s: %w", nsName, err)
	}
	ok = true
	return nil
}

// unplugDevice deletes the host side of a device's veth (and so both ends).
func unplugDevice(hostSide string) error {
	link, err := netlink.LinkByName(hostSide)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("devnet: %w", err)
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("devnet: deleting %s: %w", hostSide, err)
	}
	return nil
}
