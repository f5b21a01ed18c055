package agent

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/lf-edge/evelet/bootstrap/intent"
)

// stubNodeIP makes chooseNodeIP answer from addr ("" = no address).
func stubNodeIP(t *testing.T) *atomic.Value {
	t.Helper()
	var addr atomic.Value
	addr.Store("")
	old := chooseNodeIP
	chooseNodeIP = func() (string, error) {
		if a := addr.Load().(string); a != "" {
			return a, nil
		}
		return "", errors.New("no route")
	}
	t.Cleanup(func() { chooseNodeIP = old })
	return &addr
}

// TestAddressChangeRestartsOnlyTheKubelet (issue 18 item 4): the device's
// address moves while the node runs; the agent starts a new kubelet with
// the new address, reusing the credentials (no new join, nothing wiped).
// Before, the kubelet kept the old address until something else
// restarted it.
func TestAddressChangeRestartsOnlyTheKubelet(t *testing.T) {
	addr := stubNodeIP(t)
	addr.Store("10.0.0.1")
	h := newHarness(t, nil, nil)
	var given []string
	h.a.newKubelet = func(j *intent.Join) (kubeletProc, error) {
		ip := addr.Load().(string)
		given = append(given, ip) // only the agent's Run goroutine calls this
		h.a.followNodeIP(ip, j.NodeIP != "")
		return h.kubelet.new(j)
	}
	h.start()
	h.send(intent.Update{Join: joinA("abcdef.0123456789abcdef", pinA)})
	h.waitRunning()
	addr.Store("10.0.0.2")
	h.eventually("a second kubelet, one running", func() bool {
		started, running := h.kubelet.counts()
		return started == 2 && running == 1
	})
	h.waitRunning()
	h.stop()
	if len(given) != 2 || given[1] != "10.0.0.2" {
		t.Errorf("kubelets given %v, want the second on 10.0.0.2", given)
	}
	if _, wipes := h.store.counts(); wipes != 0 {
		t.Errorf("credentials wiped %d times", wipes)
	}
	for i, m := range h.store.prepares {
		if i > 0 && !h.store.holds(&m) {
			t.Errorf("prepare %d was a new join", i)
		}
	}
}

// TestNodeIPMovedNeedsAStableNewAddress: a blip (no address, the same one
// back) restarts nothing; a new address counts once seen on
// addrStableChecks checks in a row; an address the join pinned is never
// followed.
func TestNodeIPMovedNeedsAStableNewAddress(t *testing.T) {
	addr := stubNodeIP(t)
	h := newHarness(t, nil, nil)
	a := h.a
	a.followNodeIP("10.0.0.1", false)
	steps := []struct {
		now   string
		moved bool
	}{
		{"10.0.0.1", false},
		{"", false}, // uplink down: an offline node keeps its kubelet
		{"", false},
		{"10.0.0.1", false}, // DHCP gave the same address back
		{"10.0.0.7", false}, // first sight of a new one
		{"10.0.0.8", false}, // it moved on: start over
		{"10.0.0.8", true},
	}
	for i, s := range steps {
		addr.Store(s.now)
		got, moved := a.nodeIPMoved()
		if moved != s.moved || (moved && got != s.now) {
			t.Fatalf("step %d (%q): moved=%v to %q, want %v", i, s.now, moved, got, s.moved)
		}
	}
	a.followNodeIP("10.0.0.1", true)
	addr.Store("10.0.0.9")
	for i := 0; i < 2*addrStableChecks; i++ {
		if _, moved := a.nodeIPMoved(); moved {
			t.Fatal("an address the join pinned was followed")
		}
	}
}
