package podnet

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// RemoveBridge deletes the podcidr network's bridge (Bridge) when the node
// has left: the CNI bridge plugin makes it on the first ADD and never
// deletes it. A bridge that still has a port (a pod the kubelet did not
// remove) is kept, and said so: deleting it would cut that pod off without
// its DEL.
func RemoveBridge() error {
	l, err := netlink.LinkByName(Bridge)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bridge %s: %w", Bridge, err)
	}
	if _, ok := l.(*netlink.Bridge); !ok {
		return fmt.Errorf("%s is a %s, not the bridge evelet's pod network made; left alone", Bridge, l.Type())
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("bridge %s: listing its ports: %w", Bridge, err)
	}
	for _, p := range links {
		if p.Attrs().MasterIndex == l.Attrs().Index {
			return fmt.Errorf("bridge %s still has port %s; kept", Bridge, p.Attrs().Name)
		}
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("deleting bridge %s: %w", Bridge, err)
	}
	return nil
}
