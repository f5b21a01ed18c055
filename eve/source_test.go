package eve

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/tests/evesim"
)

// A change to a file that is not a pubsub topic (here the device key) is
// noticed by the poll, and an unchanged state is not reported twice.
func TestSourceWatchNoticesDeviceKeyChange(t *testing.T) {
	sim := newSim(t)
	if err := sim.SetCluster(evesim.Cluster{Name: "prod", JoinServerIP: "10.1.2.3", ClusterIPPrefix: "10.1.2.7/24", Token: k10}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := (&Source{Root: sim.Root, ControllerCerts: sim.ControllerCertDir(), Poll: 20 * time.Millisecond}).Watch(ctx)
	next := func() intent.Update {
		t.Helper()
		select {
		case u := <-ch:
			return u
		case <-time.After(5 * time.Second):
			t.Fatal("no update")
		}
		return intent.Update{}
	}
	if u := next(); u.Err != nil || u.Join == nil {
		t.Fatalf("first update: %+v", u)
	}
	// Unchanged inputs are not reported again: a repeat of the first update
	// (the poll runs every 20 ms) would come out before the one the key
	// change causes, and fail the check below. No sleep-based "nothing
	// happened" check: a slow machine would only make it weaker.
	if err := sim.ReplaceDeviceKey(); err != nil {
		t.Fatal(err)
	}
	if u := next(); u.Err == nil || !strings.Contains(u.Err.Error(), "clear-text hash mismatch") {
		t.Fatalf("after the device key changed (a repeat of the first update?): %+v", u)
	}
	if err := sim.RestoreDeviceKey(); err != nil {
		t.Fatal(err)
	}
	if u := next(); u.Err != nil || u.Join == nil {
		t.Fatalf("after the key was restored: %+v", u)
	}
}

// TestSourceWaitsForControllerCertsInRun (issue 7 A1): after a reboot of a
// current EVE the certificates appear under <Run> only once zedagent
// publishes them; with no --eve-controller-certs the Source looks there by
// itself, reports what it misses, and notices them when they appear.
func TestSourceWaitsForControllerCertsInRun(t *testing.T) {
	sim := newSim(t)
	if err := sim.SetCluster(evesim.Cluster{Name: "prod", JoinServerIP: "10.1.2.3", ClusterIPPrefix: "10.1.2.7/24", Token: k10}); err != nil {
		t.Fatal(err)
	}
	if err := sim.Reboot(evesim.Options{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := (&Source{Root: sim.Root, Poll: 20 * time.Millisecond}).Watch(ctx)
	next := func() intent.Update {
		t.Helper()
		select {
		case u := <-ch:
			return u
		case <-time.After(20 * time.Second):
			t.Fatal("no update")
		}
		return intent.Update{}
	}
	if u := next(); u.Err == nil || !strings.Contains(u.Err.Error(), sim.Root.ControllerCertDir()) {
		t.Fatalf("before zedagent published: %+v", u)
	}
	if err := sim.PublishControllerCerts(); err != nil {
		t.Fatal(err)
	}
	// zedagent writes one certificate file at a time: an update may show
	// the set half written (an error naming the missing hash) before the
	// good one.
	for {
		u := next()
		if u.Err == nil && u.Join != nil && u.Join.DeviceUUID == sim.UUID {
			break
		}
		if u.Err == nil || !strings.Contains(u.Err.Error(), "no controller certificate with hash") {
			t.Fatalf("after the certificates appeared: %+v", u)
		}
	}
}

// TestSourceDeliversConfigItemsWhenJoinFails (issue 16): the owner's
// config items are read from the checkpoint on their own path; a join that
// does not resolve (here the device key no longer decrypts the token) still
// delivers them, and a change of items alone is reported. Before, the
// Source reported the error without items and the agent kept the previous
// policy.
func TestSourceDeliversConfigItemsWhenJoinFails(t *testing.T) {
	sim := newSim(t)
	if err := sim.SetCluster(evesim.Cluster{Name: "prod", JoinServerIP: "10.1.2.3", ClusterIPPrefix: "10.1.2.7/24", Token: k10,
		ConfigItems: map[string]string{"evelet.policy.allow-privileged": "true"}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := (&Source{Root: sim.Root, ControllerCerts: sim.ControllerCertDir(), Poll: 20 * time.Millisecond}).Watch(ctx)
	next := func() intent.Update {
		t.Helper()
		select {
		case u := <-ch:
			return u
		case <-time.After(10 * time.Second):
			t.Fatal("no update")
		}
		return intent.Update{}
	}
	if u := next(); u.Err != nil || u.Join == nil || u.ConfigItems["evelet.policy.allow-privileged"] != "true" {
		t.Fatalf("first update: %+v", u)
	}
	if err := sim.ReplaceDeviceKey(); err != nil {
		t.Fatal(err)
	}
	if u := next(); u.Err == nil || u.ConfigItems["evelet.policy.allow-privileged"] != "true" {
		t.Fatalf("join broken: %+v", u)
	}
	// The owner tightens the policy while the join still fails.
	if err := sim.SetConfigItems(map[string]string{}); err != nil {
		t.Fatal(err)
	}
	if u := next(); u.Err == nil || u.ConfigItems == nil || len(u.ConfigItems) != 0 {
		t.Fatalf("items changed while the join fails: %+v", u)
	}
}
