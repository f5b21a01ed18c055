package eve

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/agent/intent"
	"github.com/lf-edge/evelet/tests/evesim"
)

// A change to a file that is not a pubsub topic (here the device key) is
// noticed by the poll, and an unchanged state is not reported twice.
func TestSourceWatchNoticesDeviceKeyChange(t *testing.T) {
	sim := newSim(t)
	if err := sim.SetCluster(evesim.Cluster{Name: "prod", JoinServerIP: "10.1.2.3", Token: k10}); err != nil {
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
	select {
	case u := <-ch:
		t.Fatalf("unchanged inputs reported again: %+v", u)
	case <-time.After(300 * time.Millisecond):
	}
	if err := sim.ReplaceDeviceKey(); err != nil {
		t.Fatal(err)
	}
	if u := next(); u.Err == nil || !strings.Contains(u.Err.Error(), "clear-text hash mismatch") {
		t.Fatalf("after the device key changed: %+v", u)
	}
	if err := sim.RestoreDeviceKey(); err != nil {
		t.Fatal(err)
	}
	if u := next(); u.Err != nil || u.Join == nil {
		t.Fatalf("after the key was restored: %+v", u)
	}
}
