package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/bootstrap/intent"

	"github.com/lf-edge/evelet/bootstrap"
)

const goodJoin = `apiServer: https://10.1.2.3:6443
token: abcdef.0123456789abcdef
caCertHashes: ["sha256:0101010101010101010101010101010101010101010101010101010101010101"]
nodeName: edge-1
deviceUUID: 6ba7b810-9dad-11d1-80b4-00c04fd430c8
`

func TestParseJoin(t *testing.T) {
	j, err := ParseJoin([]byte(goodJoin))
	if err != nil {
		t.Fatal(err)
	}
	if j.APIServer != "https://10.1.2.3:6443" || j.NodeName != "edge-1" || len(j.CACertHashes) != 1 {
		t.Fatalf("parsed %+v", j)
	}
	for name, in := range map[string]string{
		"typo field": strings.Replace(goodJoin, "caCertHashes", "caCertHash", 1),
		"not yaml":   "{{{",
		"no node":    strings.Replace(goodJoin, "nodeName: edge-1", "", 1),
		"no uuid":    strings.Replace(goodJoin, "deviceUUID: 6ba7b810-9dad-11d1-80b4-00c04fd430c8", "", 1),
		"bad token":  strings.Replace(goodJoin, "abcdef.0123456789abcdef", "nope", 1),
		"empty":      "",
	} {
		if _, err := ParseJoin([]byte(in)); err == nil || !bootstrap.IsPermanent(err) {
			t.Errorf("%s: err = %v, want a permanent error", name, err)
		}
	}
}

// TestJoinFileWatchReportsChangesOnly counts the watcher's polls through its
// polled hook instead of sleeping: once two whole polls have read the
// unchanged file after the one that reported it, a repeat would already be
// in the channel (the watcher sends before it signals the poll).
func TestJoinFileWatchReportsChangesOnly(t *testing.T) {
	p := filepath.Join(t.TempDir(), "join.yaml")
	polls := make(chan struct{}, 1024)
	f := &JoinFile{Path: p, Interval: time.Millisecond, AbsentFor: time.Millisecond,
		polled: func() {
			select {
			case polls <- struct{}{}:
			default:
			}
		}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := f.Watch(ctx)
	next := func() intent.Update {
		t.Helper()
		select {
		case u := <-ch:
			return u
		case <-time.After(time.Minute):
			t.Fatal("no update within a minute")
		}
		return intent.Update{}
	}
	if u := next(); u.Join != nil || u.Err != nil {
		t.Fatalf("missing file: %+v, want not-joined", u)
	}
	os.WriteFile(p, []byte(goodJoin), 0o600)
	if u := next(); u.Err != nil || u.Join == nil || u.Join.NodeName != "edge-1" {
		t.Fatalf("after write: %+v", u)
	}
	for drained := false; !drained; {
		select {
		case <-polls:
		default:
			drained = true
		}
	}
	// Three signals from now: the reporting poll's may be one of them, so
	// at least two more polls read the unchanged file and decided.
	for i := 0; i < 3; i++ {
		select {
		case <-polls:
		case u := <-ch:
			t.Fatalf("unchanged file reported again: %+v", u)
		case <-time.After(time.Minute):
			t.Fatal("the watcher stopped polling")
		}
	}
	select {
	case u := <-ch:
		t.Fatalf("unchanged file reported again: %+v", u)
	default:
	}
	os.WriteFile(p, []byte("garbage: ["), 0o600)
	if u := next(); u.Err == nil {
		t.Fatalf("malformed file: %+v, want an error", u)
	}
}
