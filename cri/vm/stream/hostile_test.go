package stream

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/cri/vm/qga"
)

// hostileAgent is a guest agent that answers guest-exec-status with 100 MB
// of output, without holding it: the attack of issue 21 item 10.
func hostileAgent(c net.Conn) {
	defer c.Close()
	dec := json.NewDecoder(bufio.NewReader(noDelimiters{c}))
	chunk := []byte(strings.Repeat("QUFB", 16<<10))
	for {
		var req struct {
			Execute   string         `json:"execute"`
			Arguments map[string]any `json:"arguments"`
		}
		if err := dec.Decode(&req); err != nil {
			return
		}
		switch req.Execute {
		case "guest-sync-delimited":
			b, _ := json.Marshal(map[string]any{"return": req.Arguments["id"]})
			c.Write(append(append([]byte{0xff}, b...), '\n'))
		case "guest-exec":
			io.WriteString(c, `{"return": {"pid": 1}}`+"\n")
		case "guest-exec-status":
			io.WriteString(c, `{"return": {"exited": true, "exitcode": 0, "out-data": "`)
			for n := 0; n < 100<<20; n += len(chunk) {
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
			io.WriteString(c, "\"}}\n")
		}
	}
}

// noDelimiters drops the 0xFF byte the client sends before guest-sync.
type noDelimiters struct{ r io.Reader }

func (d noDelimiters) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	j := 0
	for _, b := range p[:n] {
		if b != 0xff {
			p[j] = b
			j++
		}
	}
	return j, err
}

// TestExecSyncHostileGuestIsBounded: an exec probe (CRI ExecSync, what the
// kubelet runs for livenessProbe.exec) against a guest agent answering
// with 100 MB fails with an error saying why, and costs the agent a
// bounded amount of memory, every time it runs (the evelet agent went to
// 700-850 MB under such a probe).
func TestExecSyncHostileGuestIsBounded(t *testing.T) {
	rt := New(locator(Paths{QGASocket: unixServer(t, "qga.sock", hostileAgent)}), nil)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < 3; i++ { // three probe periods
		_, err := rt.ExecSync(context.Background(), "vm1", []string{"/bin/true"}, 30*time.Second)
		if err == nil || !strings.Contains(err.Error(), "MiB") {
			t.Fatalf("probe %d against a 100 MB answer: %v, want an error about the answer's size", i, err)
		}
	}
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("three exec probes against a 100 MB answer allocated %d MiB", alloc>>20)
	if limit := uint64(3 * 8 * qga.MaxAnswer); alloc > limit {
		t.Errorf("allocated %d MiB, want at most %d MiB", alloc>>20, limit>>20)
	}
}
