package socketsub

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/eve/pubsub/socketpub"
)

// The subscriber against evelet's publisher: values in order, and a
// publisher restart (new socket) is followed.
func TestFollowAcrossPublisherRestart(t *testing.T) {
	d := t.TempDir()
	root := pubsub.Root{Run: filepath.Join(d, "run"), Persist: filepath.Join(d, "persist")}
	// A KVM (non-k) build, as EVE's init records it: evelet publishes
	// NodeDrainStatus itself only where zedkube does not exist.
	if err := os.MkdirAll(filepath.Dir(root.EVEHVType()), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(root.EVEHVType(), []byte("kvm\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sub := Follow(ctx, socketpub.SocketPath(root, pubsub.AgentZedKube, pubsub.TopicNodeDrainStatus), pubsub.TopicNodeDrainStatus)
	pub, err := socketpub.OpenDrainStatus(root, socketpub.Options{})
	if err != nil {
		t.Fatal(err)
	}
	set := func(p *socketpub.DrainStatus, s pubsub.DrainStatus) {
		t.Helper()
		if err := p.Set(pubsub.NodeDrainStatus{Status: s, RequestedBy: pubsub.DrainRequesterUpdate}); err != nil {
			t.Fatal(err)
		}
		want := `{"Status":` + string(rune('0'+s)) + `,"RequestedBy":3}`
		if err := sub.Wait(ctx, pubsub.KeyGlobal, func(v string) bool { return v == want }); err != nil {
			t.Fatal(err)
		}
	}
	set(pub, pubsub.DrainStatusRequested)
	set(pub, pubsub.DrainStatusCordoned)
	pub.Close()
	pub, err = socketpub.OpenDrainStatus(root, socketpub.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	set(pub, pubsub.DrainStatusComplete)
	h := sub.History()
	if len(h) != 3 {
		t.Errorf("history %q, want the three values once each", h)
	}
}
