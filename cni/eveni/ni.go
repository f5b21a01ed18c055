package eveni

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lf-edge/evelet/eve/pubsub"
)

// NI is a network instance the owner gave to Kubernetes, ready to attach.
type NI struct {
	Status pubsub.NetworkInstanceStatus
	Grant  Grant
}

// Name is how refusals name the NI: display name and UUID.
func (n *NI) Name() string { return fmt.Sprintf("%q (%s)", n.Status.DisplayName, n.Status.UUID) }

// ReadNIs returns every NetworkInstanceStatus zedrouter publishes under
// eveRun, keyed by file key (the NI UUID). Files that do not decode are
// skipped: they are EVE's to fix, and a pod naming one is refused as absent.
func ReadNIs(eveRun string) (map[string]pubsub.NetworkInstanceStatus, error) {
	dir := pubsub.Root{Run: eveRun}.NetworkInstanceStatusDir()
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[string]pubsub.NetworkInstanceStatus{}
	for _, e := range ents {
		key, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		st, err := pubsub.Decode[pubsub.NetworkInstanceStatus](p, b)
		if err != nil {
			continue
		}
		out[key] = st
	}
	return out, nil
}

// Matches says whether ref (a display name or UUID) names st.
func Matches(ref string, key string, st pubsub.NetworkInstanceStatus) bool {
	return ref != "" && (ref == key || ref == st.UUID.String() || ref == st.DisplayName)
}

// GrantFor returns the owner's grant for st, if any.
func (s *Settings) GrantFor(key string, st pubsub.NetworkInstanceStatus) (Grant, bool) {
	for _, g := range s.Allowed {
		if Matches(g.NetworkInstance, key, st) {
			return g, true
		}
	}
	return Grant{}, false
}

// Resolve finds the NI ref names and checks that a pod may attach to it
// now: it exists, is unambiguous, given to Kubernetes, activated, of a
// supported type, and (Local) has a valid reserved range.
//
// While zedrouter has a change of the NI in progress (ChangeInProgress
// set: it is creating, modifying or deleting it), its status is not final:
// Resolve waits for the change to end, at most changeWait, and refuses
// the pod if it does not.
func (s *Settings) Resolve(ref string) (*NI, error) {
	deadline := time.Now().Add(changeWait)
	for {
		n, changing, err := s.resolveOnce(ref)
		if err != nil || !changing {
			return n, err
		}
		if !time.Now().Before(deadline) {
			return nil, fmt.Errorf("EVE network instance %s: EVE has had a change of it in progress (ChangeInProgress=%d) for %v; try again once zedrouter has finished", n.Name(), n.Status.ChangeInProgress, changeWait)
		}
		if onChangeWait != nil {
			onChangeWait()
		}
		time.Sleep(changePoll)
	}
}

// changeWait bounds how long ADD waits for an NI change to end (the
// kubelet retries a failed sandbox); changePoll is how often it looks.
var (
	changeWait   = 20 * time.Second
	changePoll   = 250 * time.Millisecond
	onChangeWait func() // tests
)

// resolveOnce is Resolve without the wait; changing says the NI has a
// change in progress (n is then only good for its name).
func (s *Settings) resolveOnce(ref string) (n *NI, changing bool, err error) {
	nis, err := ReadNIs(s.EVERun)
	if err != nil {
		return nil, false, fmt.Errorf("reading EVE network instances: %w", err)
	}
	var found []string
	for k, st := range nis {
		if Matches(ref, k, st) {
			found = append(found, k)
		}
	}
	switch {
	case len(found) == 0:
		return nil, false, fmt.Errorf("EVE network instance %q does not exist on this device", ref)
	case len(found) > 1:
		return nil, false, fmt.Errorf("%d EVE network instances are named %q; name one by UUID", len(found), ref)
	}
	st := nis[found[0]]
	n = &NI{Status: st}
	if st.ChangeInProgress != pubsub.ChangeInProgressTypeNone {
		return n, true, nil
	}
	g, ok := s.GrantFor(found[0], st)
	if !ok {
		return nil, false, fmt.Errorf("EVE network instance %s is not given to Kubernetes by the device owner (config item evelet.policy.network-instances)", n.Name())
	}
	n.Grant = g
	if !st.Activated {
		msg := fmt.Sprintf("EVE network instance %s is not activated", n.Name())
		if st.Error != "" {
			msg += ": " + st.Error
		}
		return nil, false, errors.New(msg)
	}
	if st.BridgeName == "" {
		return nil, false, fmt.Errorf("EVE network instance %s has no bridge yet", n.Name())
	}
	switch st.Type {
	case pubsub.NetworkInstanceTypeLocal:
		if err := n.checkRange(); err != nil {
			return nil, false, err
		}
	case pubsub.NetworkInstanceTypeSwitch:
	default:
		return nil, false, fmt.Errorf("EVE network instance %s is of type %d; only Local (2) and Switch (1) NIs can be attached", n.Name(), st.Type)
	}
	return n, false, nil
}

// checkRange checks the owner's reserved range against the Local NI:
// IPv4, inside the subnet, clear of EVE's DhcpRange.
func (n *NI) checkRange() error {
	st, g := n.Status, n.Grant
	if g.ReservedStart == nil || g.ReservedEnd == nil {
		return fmt.Errorf("EVE network instance %s is a Local NI but the device owner reserved no address range for Kubernetes on it (evelet.policy.network-instances entry %q needs \"=<first>-<last>\")", n.Name(), g.NetworkInstance)
	}
	start, end := g.ReservedStart.To4(), g.ReservedEnd.To4()
	if st.Subnet == nil || st.Subnet.IP.To4() == nil {
		return fmt.Errorf("EVE network instance %s has no IPv4 subnet", n.Name())
	}
	if start == nil || end == nil || bytes.Compare(start, end) > 0 {
		return fmt.Errorf("reserved range %s-%s for EVE network instance %s is not an IPv4 range", g.ReservedStart, g.ReservedEnd, n.Name())
	}
	if !st.Subnet.Contains(start) || !st.Subnet.Contains(end) {
		return fmt.Errorf("reserved range %s-%s for EVE network instance %s is not inside its subnet %s", start, end, n.Name(), st.Subnet)
	}
	if ds, de := n.dhcpRange(); ds != nil && u32(start) <= u32(de) && u32(ds) <= u32(end) {
		return fmt.Errorf("reserved range %s-%s for EVE network instance %s overlaps its DhcpRange %s-%s, whose addresses EVE gives its own apps", start, end, n.Name(), ds, de)
	}
	return nil
}

// dhcpRange is EVE's DhcpRange; an unset end means to the subnet's end.
func (n *NI) dhcpRange() (net.IP, net.IP) {
	st := n.Status
	s := st.DhcpRange.Start.To4()
	if s == nil {
		return nil, nil
	}
	e := st.DhcpRange.End.To4()
	if e == nil {
		e = lastAddr(st.Subnet)
	}
	return s, e
}

// excluded are addresses in the reserved range no pod may get: the
// subnet's network and broadcast addresses, the gateway and bridge
// addresses, and every address EVE assigned to an app.
func (n *NI) excluded(ip net.IP) bool {
	st := n.Status
	if ip.Equal(st.Subnet.IP.Mask(st.Subnet.Mask)) || ip.Equal(lastAddr(st.Subnet)) ||
		ip.Equal(st.Gateway) || ip.Equal(st.BridgeIPAddr) {
		return true
	}
	for _, a := range st.IPAssignments {
		for _, x := range a.IPv4Addrs {
			if ip.Equal(x.Address) {
				return true
			}
		}
	}
	return false
}

// gateway is the NI's gateway (the bridge address when unset).
func (n *NI) gateway() net.IP {
	if n.Status.Gateway != nil {
		return n.Status.Gateway
	}
	return n.Status.BridgeIPAddr
}

// dns is the NI's DNS servers; EVE's rule: none listed means the gateway.
func (n *NI) dns() []string {
	var out []string
	for _, s := range n.Status.DnsServers {
		out = append(out, s.String())
	}
	if len(out) == 0 && n.gateway() != nil {
		out = []string{n.gateway().String()}
	}
	return out
}

func u32(ip net.IP) uint32 { return binary.BigEndian.Uint32(ip.To4()) }

func fromU32(v uint32) net.IP {
	ip := make(net.IP, 4)
	binary.BigEndian.PutUint32(ip, v)
	return ip
}

func lastAddr(n *net.IPNet) net.IP {
	ip := n.IP.To4()
	if ip == nil {
		return nil
	}
	m := net.IP(n.Mask).To4()
	if len(n.Mask) == 4 {
		m = net.IP(n.Mask)
	}
	out := make(net.IP, 4)
	for i := range out {
		out[i] = ip[i] | ^m[i]
	}
	return out
}
