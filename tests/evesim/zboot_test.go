package evesim

import (
	"os"
	"strings"
	"testing"

	"github.com/lf-edge/evelet/eve/pubsub"
)

// part is what an EVE-side reader sees of one partition: the ZbootStatus
// file baseosmgr publishes.
type part struct {
	state, version string
	current        bool
}

func readParts(t *testing.T, d *Device) map[string]part {
	t.Helper()
	got := map[string]part{}
	for _, l := range []string{pubsub.PartitionIMGA, pubsub.PartitionIMGB} {
		z, ok, err := pubsub.Read[pubsub.ZbootStatus](d.Root.ZbootStatus(l))
		if err != nil || !ok {
			t.Fatalf("ZbootStatus %s: ok=%v err=%v", l, ok, err)
		}
		got[l] = part{z.PartitionState, z.ShortVersion, z.CurrentPartition}
	}
	return got
}

func wantParts(t *testing.T, step string, d *Device, a, b part) {
	t.Helper()
	got := readParts(t, d)
	if got[pubsub.PartitionIMGA] != a || got[pubsub.PartitionIMGB] != b {
		t.Fatalf("%s: IMGA %+v IMGB %+v, want IMGA %+v IMGB %+v", step, got[pubsub.PartitionIMGA], got[pubsub.PartitionIMGB], a, b)
	}
	rel, err := os.ReadFile(d.Root.EVERelease())
	if err != nil {
		t.Fatal(err)
	}
	cur := a
	if b.current {
		cur = b
	}
	if strings.TrimSpace(string(rel)) != cur.version {
		t.Fatalf("%s: eve-release %q, want the current partition's %q", step, rel, cur.version)
	}
	na := pubsub.PartitionIMGA
	if b.current {
		na = pubsub.PartitionIMGB
	}
	if d.CurrentPartition() != na {
		t.Fatalf("%s: CurrentPartition %s, want %s", step, d.CurrentPartition(), na)
	}
}

// An update goes to the other partition, is booted from it under test,
// and either completes or falls back, as baseosmgr and GRUB do it.
func TestPartitionsThroughAnUpdate(t *testing.T) {
	d := newDevice(t)
	v1, v2 := d.OSVersion, "16.13.0-kvm-amd64"
	active, unused := pubsub.PartitionStateActive, pubsub.PartitionStateUnused
	updating, underTest := pubsub.PartitionStateUpdating, pubsub.PartitionStateInProgress

	wantParts(t, "new device", d, part{active, v1, true}, part{unused, "", false})
	if err := d.SetPartitionUpdating(v2); err != nil {
		t.Fatal(err)
	}
	wantParts(t, "image written", d, part{active, v1, true}, part{updating, v2, false})
	if err := d.Reboot(Options{OSVersion: v2}); err != nil {
		t.Fatal(err)
	}
	wantParts(t, "booted into the update", d, part{active, v1, false}, part{underTest, v2, true})
	if err := d.SetNodeAgent(true, false); err != nil {
		t.Fatal(err)
	}
	na, _, err := pubsub.Read[pubsub.NodeAgentStatus](d.Root.NodeAgentStatus())
	if err != nil || na.CurPart != pubsub.PartitionIMGB {
		t.Fatalf("NodeAgentStatus.CurPart = %q (%v), want IMGB", na.CurPart, err)
	}

	// Fallback while testing: back to IMGA, the failed update stays.
	fb := newDevice(t)
	fb.SetPartitionUpdating(v2)
	fb.Reboot(Options{OSVersion: v2})
	if err := fb.Reboot(Options{OSVersion: v1}); err != nil {
		t.Fatal(err)
	}
	wantParts(t, "fallback after boot", fb, part{active, v1, true}, part{underTest, v2, false})

	// The test window ends: the new partition is the one to keep.
	if err := d.CompleteTest(); err != nil {
		t.Fatal(err)
	}
	wantParts(t, "test complete", d, part{unused, "", false}, part{active, v2, true})

	// The next update goes to IMGA now, and a plain reboot changes nothing.
	if err := d.Reboot(Options{OSVersion: v2}); err != nil {
		t.Fatal(err)
	}
	wantParts(t, "plain reboot", d, part{unused, "", false}, part{active, v2, true})
	if err := d.SetPartitionUpdating("16.14.0-kvm-amd64"); err != nil {
		t.Fatal(err)
	}
	wantParts(t, "second update written", d, part{updating, "16.14.0-kvm-amd64", false}, part{active, v2, true})
	// A fallback before the new version came up at all: same version again.
	if err := d.Reboot(Options{OSVersion: v2}); err != nil {
		t.Fatal(err)
	}
	wantParts(t, "fallback before boot", d, part{underTest, "16.14.0-kvm-amd64", false}, part{active, v2, true})
}
