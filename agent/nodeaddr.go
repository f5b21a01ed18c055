package agent

import (
	utilnet "k8s.io/apimachinery/pkg/util/net"
)

// The kubelet's node IP, when the join does not pin one, is the address of
// the device's default-route interface at kubelet start (kubelet-shim
// WriteConfig), and the kubelet listens there and reports it. A DHCP
// renewal, an LTE reattach or a new uplink can change that address while
// the node runs; the kubelet would keep listening on an address the device
// no longer has. The agent follows it: once the chosen address has been a
// different one for addrStableChecks checks in a row (the agent's 2 s
// tick), it restarts the kubelet with the new address. Only the kubelet
// restarts: pods keep running, the credentials are reused (no new join),
// and the kubelet's own machinery updates the Node's addresses and asks for
// a serving certificate with the new address. No address at all (the
// uplink down) changes nothing: an offline node keeps its kubelet.
const addrStableChecks = 2

// nodeAddr is the agent's view of the node IP it chose.
type nodeAddr struct {
	pinned    string // the address the running kubelet was given; "" = not ours to follow
	candidate string // a different address seen on the last checks
	seen      int
}

// chooseNodeIP is the kubelet's own rule (the default-route interface's
// address), a variable for tests.
var chooseNodeIP = func() (string, error) {
	ip, err := utilnet.ChooseHostInterface()
	if err != nil {
		return "", err
	}
	return ip.String(), nil
}

// followNodeIP records the address the kubelet now runs with; pinned by
// the join (the owner chose it), it is not followed.
func (a *Agent) followNodeIP(ip string, pinnedByJoin bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.addr = nodeAddr{}
	if !pinnedByJoin {
		a.addr.pinned = ip
	}
}

// nodeIPMoved says whether the device's address has moved away from the
// kubelet's for addrStableChecks checks in a row, and to what.
func (a *Agent) nodeIPMoved() (string, bool) {
	a.mu.Lock()
	pinned := a.addr.pinned
	a.mu.Unlock()
	if pinned == "" {
		return "", false
	}
	now, err := chooseNodeIP()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.addr.pinned != pinned {
		return "", false // a new kubelet meanwhile
	}
	if err != nil || now == "" || now == pinned {
		a.addr.candidate, a.addr.seen = "", 0
		return "", false
	}
	if now != a.addr.candidate {
		a.addr.candidate, a.addr.seen = now, 0
	}
	a.addr.seen++
	if a.addr.seen < addrStableChecks {
		return "", false
	}
	return now, true
}
