package socketpub

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lf-edge/evelet/eve/pubsub"
)

// The subscriber below is written from the protocol as docs/eve-pubsub.md
// describes it (and as socketdriver's subscriber behaves), not with this
// package's encoder: dial SOCK_SEQPACKET, send "request <topic>", then each
// read is one message of space-separated words; keys and values are
// standard base64.

const topic = "NodeDrainStatus"

// deadline bounds every wait; no test sleeps for a fixed time.
const deadline = 20 * time.Second

type sub struct {
	t      *testing.T
	path   string
	topic  string
	c      net.Conn
	items  map[string]string
	synced bool
	hello  string
	// restarted is the last counter received; -1 if none.
	restarted int
	log       []string // every message, in order, key/value decoded
}

func dial(t *testing.T, path, topic string) *sub {
	t.Helper()
	s := &sub{t: t, path: path, topic: topic, items: map[string]string{}, restarted: -1}
	if err := s.connect(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.c.Close() })
	return s
}

func (s *sub) connect() error {
	c, err := net.Dial("unixpacket", s.path)
	if err != nil {
		return err
	}
	if _, err := c.Write([]byte("request " + s.topic)); err != nil {
		c.Close()
		return err
	}
	s.c = c
	return nil
}

// read takes one message and applies it. It returns io.EOF (or another
// error) when the publisher closed the connection.
func (s *sub) read() error {
	s.t.Helper()
	buf := make([]byte, 65536)
	s.c.SetReadDeadline(time.Now().Add(deadline))
	n, err := s.c.Read(buf)
	if err != nil {
		return err
	}
	if n == 0 {
		return io.EOF
	}
	if n == len(buf) {
		s.t.Fatalf("message filled the whole %d-byte buffer", n)
	}
	f := strings.Split(string(buf[:n]), " ")
	if len(f) < 2 || f[1] != s.topic {
		s.t.Fatalf("message %q: want <kind> %s ...", buf[:n], s.topic)
	}
	dec := func(x string) string {
		b, err := base64.StdEncoding.DecodeString(x)
		if err != nil {
			s.t.Fatalf("message %q: %q is not base64: %v", buf[:n], x, err)
		}
		return string(b)
	}
	switch f[0] {
	case "hello":
		if len(f) != 3 {
			s.t.Fatalf("hello %q: want hello <topic> <persistent>", buf[:n])
		}
		s.hello = string(buf[:n])
		s.log = append(s.log, "hello")
	case "update":
		if len(f) != 4 {
			s.t.Fatalf("update %q has %d words, want 4", buf[:n], len(f))
		}
		k, v := dec(f[2]), dec(f[3])
		s.items[k] = v
		s.log = append(s.log, "update "+k+" "+v)
	case "delete":
		if len(f) != 3 {
			s.t.Fatalf("delete %q has %d words, want 3", buf[:n], len(f))
		}
		k := dec(f[2])
		delete(s.items, k)
		s.log = append(s.log, "delete "+k)
	case "complete":
		s.synced = true
		s.log = append(s.log, "complete")
	case "restarted":
		if len(f) != 3 {
			s.t.Fatalf("restarted %q: want 3 words", buf[:n])
		}
		c, err := strconv.Atoi(f[2])
		if err != nil {
			s.t.Fatalf("restarted %q: %v", buf[:n], err)
		}
		s.restarted = c
		s.log = append(s.log, "restarted "+f[2])
	default:
		s.t.Fatalf("unknown message %q", buf[:n])
	}
	return nil
}

// until reads messages until cond holds; a closed connection or the
// deadline fails the test.
func (s *sub) until(what string, cond func() bool) {
	s.t.Helper()
	for !cond() {
		if err := s.read(); err != nil {
			s.t.Fatalf("waiting for %s: %v (messages so far: %q)", what, err, s.log)
		}
	}
}

func (s *sub) value(key string) string { return s.items[key] }

func testRoot(t *testing.T) pubsub.Root {
	d := t.TempDir()
	return pubsub.Root{Run: filepath.Join(d, "run"), Persist: filepath.Join(d, "persist")}
}

func open(t *testing.T, r pubsub.Root) *Publication {
	t.Helper()
	p, err := Open(r, pubsub.AgentZedKube, topic, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestSubscribersBeforeAndAfterChanges(t *testing.T) {
	r := testRoot(t)
	p := open(t, r)
	if err := p.PublishJSON("global", []byte(`{"Status":2,"RequestedBy":1}`)); err != nil {
		t.Fatal(err)
	}

	early := dial(t, SocketPath(r, pubsub.AgentZedKube, topic), topic)
	early.until("initial sync", func() bool { return early.synced })
	if early.hello != "hello NodeDrainStatus false" {
		t.Errorf("hello = %q, want %q", early.hello, "hello NodeDrainStatus false")
	}
	if want := []string{"hello", `update global {"Status":2,"RequestedBy":1}`, "complete"}; fmt.Sprint(early.log) != fmt.Sprint(want) {
		t.Errorf("first messages %q, want %q", early.log, want)
	}

	// A change reaches the connected subscriber.
	if err := p.Publish("global", pubsub.NodeDrainStatus{Status: pubsub.DrainStatusCordoned, RequestedBy: pubsub.DrainRequesterUpdate}); err != nil {
		t.Fatal(err)
	}
	early.until("update", func() bool { return early.value("global") == `{"Status":5,"RequestedBy":3}` })

	// Two keys, one of them with a space and non-ASCII (base64 carries it).
	if err := p.PublishJSON("other key é", []byte(`{"x": "a b"}`)); err != nil {
		t.Fatal(err)
	}
	early.until("second key", func() bool { return early.value("other key é") == `{"x": "a b"}` })

	// A subscriber connecting now gets every current key, then complete.
	late := dial(t, SocketPath(r, pubsub.AgentZedKube, topic), topic)
	late.until("initial sync", func() bool { return late.synced })
	if len(late.items) != 2 || late.value("global") != `{"Status":5,"RequestedBy":3}` || late.value("other key é") != `{"x": "a b"}` {
		t.Errorf("late subscriber has %q at complete", late.items)
	}
	if late.log[0] != "hello" || late.log[len(late.log)-1] != "complete" {
		t.Errorf("late subscriber messages %q: want hello first and complete after the items", late.log)
	}

	// Delete reaches both.
	if err := p.Unpublish("other key é"); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*sub{early, late} {
		s.until("delete", func() bool { _, ok := s.items["other key é"]; return !ok })
		if s.log[len(s.log)-1] != "delete other key é" {
			t.Errorf("last message %q, want the delete", s.log[len(s.log)-1])
		}
	}
	if _, err := os.Stat(filepath.Join(p.Dir(), "other key é.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("file of the unpublished key: %v", err)
	}

	// The same value again sends nothing: the next message is the next change.
	if err := p.Publish("global", pubsub.NodeDrainStatus{Status: pubsub.DrainStatusCordoned, RequestedBy: pubsub.DrainRequesterUpdate}); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish("global", pubsub.NodeDrainStatus{Status: pubsub.DrainStatusComplete, RequestedBy: pubsub.DrainRequesterUpdate}); err != nil {
		t.Fatal(err)
	}
	n := len(early.log)
	early.until("update", func() bool { return len(early.log) > n })
	if got := early.log[n]; got != `update global {"Status":9,"RequestedBy":3}` {
		t.Errorf("after an unchanged publish, next message %q", got)
	}
}

func TestFilesAndModes(t *testing.T) {
	r := testRoot(t)
	p := open(t, r)
	if err := p.Publish("global", pubsub.NodeDrainStatus{Status: pubsub.DrainStatusRequested, RequestedBy: pubsub.DrainRequesterDeviceOp}); err != nil {
		t.Fatal(err)
	}
	file := r.NodeDrainStatus()
	b, err := os.ReadFile(file)
	if err != nil || string(b) != `{"Status":3,"RequestedBy":2}` {
		t.Fatalf("file %s = %q, %v", file, b, err)
	}
	check := func(path string, want os.FileMode) {
		t.Helper()
		st, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode()&(os.ModeType|os.ModePerm) != want {
			t.Errorf("%s: mode %v, want %v", path, st.Mode(), want)
		}
	}
	check(filepath.Join(r.Run, "zedkube"), os.ModeDir|0o700)
	check(filepath.Dir(file), os.ModeDir|0o700)
	check(file, 0o600)
	st, err := os.Lstat(filepath.Join(r.Run, "zedkube", "NodeDrainStatus.sock"))
	if err != nil || st.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket: %v %v", st, err)
	}
	ents, _ := os.ReadDir(filepath.Dir(file))
	if len(ents) != 1 {
		t.Errorf("topic dir holds %d entries, want just global.json (temp files left?)", len(ents))
	}
}

func TestPublisherRestart(t *testing.T) {
	r := testRoot(t)
	sock := SocketPath(r, pubsub.AgentZedKube, topic)
	p, err := Open(r, pubsub.AgentZedKube, topic, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.PublishJSON("global", []byte(`{"Status":4,"RequestedBy":3}`)); err != nil {
		t.Fatal(err)
	}
	s := dial(t, sock, topic)
	s.until("sync", func() bool { return s.synced })

	// A second publisher of the same topic is refused while the first runs.
	if _, err := Open(r, pubsub.AgentZedKube, topic, Options{}); err == nil || !strings.Contains(err.Error(), "already served") {
		t.Fatalf("second publisher: %v, want 'already served'", err)
	}

	// Close: the subscriber's connection ends and the socket goes away.
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	s.closedByPublisher()
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after Close: %v", err)
	}
	if err := p.PublishJSON("global", []byte(`{}`)); err == nil {
		t.Error("publish after Close succeeded")
	}

	// A new publisher serves what the old one left; the subscriber
	// reconnects (as EVE's does) and gets it.
	p2 := open(t, r)
	s.c.Close()
	if err := s.connect(); err != nil {
		t.Fatal(err)
	}
	s.synced, s.items = false, map[string]string{}
	s.until("sync after restart", func() bool { return s.synced })
	if s.value("global") != `{"Status":4,"RequestedBy":3}` {
		t.Errorf("after restart: %q", s.items)
	}
	if err := p2.PublishJSON("global", []byte(`{"Status":9,"RequestedBy":3}`)); err != nil {
		t.Fatal(err)
	}
	s.until("update after restart", func() bool { return s.value("global") == `{"Status":9,"RequestedBy":3}` })
}

// A publisher that died without closing leaves its socket file; the next
// one must replace it.
func TestStaleSocketReplaced(t *testing.T) {
	r := testRoot(t)
	sock := SocketPath(r, pubsub.AgentZedKube, topic)
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	p := open(t, r)
	if err := p.PublishJSON("global", []byte(`{"Status":2,"RequestedBy":1}`)); err != nil {
		t.Fatal(err)
	}
	s := dial(t, sock, topic)
	s.until("sync", func() bool { return s.synced })
	if s.value("global") != `{"Status":2,"RequestedBy":1}` {
		t.Errorf("items %q", s.items)
	}

	// Something that is not a socket is left alone.
	r2 := testRoot(t)
	sock2 := SocketPath(r2, pubsub.AgentZedKube, topic)
	os.MkdirAll(filepath.Dir(sock2), 0o700)
	if err := os.WriteFile(sock2, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(r2, pubsub.AgentZedKube, topic, Options{}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file at the socket path: %v", err)
	}
}

func TestRestartedCounter(t *testing.T) {
	r := testRoot(t)
	sock := SocketPath(r, pubsub.AgentZedKube, topic)
	p, err := Open(r, pubsub.AgentZedKube, topic, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.PublishJSON("global", []byte(`{"Status":2,"RequestedBy":1}`)); err != nil {
		t.Fatal(err)
	}
	s := dial(t, sock, topic)
	s.until("sync", func() bool { return s.synced })
	if err := p.SignalRestarted(); err != nil {
		t.Fatal(err)
	}
	s.until("restarted 1", func() bool { return s.restarted == 1 })
	if b, err := os.ReadFile(filepath.Join(p.Dir(), "restarted")); err != nil || string(b) != "1" {
		t.Errorf("restarted file: %q %v", b, err)
	}

	// A new subscriber gets the counter after complete.
	s2 := dial(t, sock, topic)
	s2.until("restarted", func() bool { return s2.restarted >= 0 })
	if want := []string{"hello", `update global {"Status":2,"RequestedBy":1}`, "complete", "restarted 1"}; fmt.Sprint(s2.log) != fmt.Sprint(want) {
		t.Errorf("messages %q, want %q", s2.log, want)
	}

	// The counter survives a restart of the publisher.
	p.Close()
	p2 := open(t, r)
	s3 := dial(t, sock, topic)
	s3.until("restarted", func() bool { return s3.restarted == 1 })
	if err := p2.SignalRestarted(); err != nil {
		t.Fatal(err)
	}
	s3.until("restarted 2", func() bool { return s3.restarted == 2 })

	// Clearing tells a subscriber that saw a counter, and removes the file.
	if err := p2.ClearRestarted(); err != nil {
		t.Fatal(err)
	}
	s3.until("restarted 0", func() bool { return s3.restarted == 0 })
	if _, err := os.Stat(filepath.Join(p2.Dir(), "restarted")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("restarted file after clear: %v", err)
	}
	// And a new subscriber hears nothing about a zero counter.
	s4 := dial(t, sock, topic)
	s4.until("sync", func() bool { return s4.synced })
	if err := p2.PublishJSON("global", []byte(`{"Status":3,"RequestedBy":1}`)); err != nil {
		t.Fatal(err)
	}
	s4.until("update", func() bool { return s4.value("global") == `{"Status":3,"RequestedBy":1}` })
	if s4.restarted != -1 {
		t.Errorf("new subscriber got restarted %d with counter 0: %q", s4.restarted, s4.log)
	}
}

func TestBadRequestAndInput(t *testing.T) {
	r := testRoot(t)
	p := open(t, r)
	sock := SocketPath(r, pubsub.AgentZedKube, topic)

	for _, req := range []string{"request NodeDrainRequest", "request", "subscribe NodeDrainStatus", "request NodeDrainStatus extra"} {
		c, err := net.Dial("unixpacket", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(req))
		c.SetReadDeadline(time.Now().Add(deadline))
		buf := make([]byte, 65536)
		if n, err := c.Read(buf); err == nil && n > 0 {
			t.Errorf("request %q answered with %q, want the connection closed", req, buf[:n])
		}
		c.Close()
	}

	big := `"` + strings.Repeat("a", 49200) + `"`
	if err := p.PublishJSON("global", []byte(big)); err == nil || !strings.Contains(err.Error(), "65535") {
		t.Errorf("oversized value: %v", err)
	}
	if _, err := os.Stat(r.NodeDrainStatus()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("oversized value was written: %v", err)
	}
	// Just under the limit goes through, and the subscriber can read it.
	ok := `"` + strings.Repeat("a", 48900) + `"`
	if err := p.PublishJSON("global", []byte(ok)); err != nil {
		t.Fatal(err)
	}
	s := dial(t, sock, topic)
	s.until("sync", func() bool { return s.synced })
	if s.value("global") != ok {
		t.Errorf("large value lost")
	}
	for _, k := range []string{"", "a/b", "..", ".hidden", strings.Repeat("k", 251)} {
		if err := p.PublishJSON(k, []byte(`{}`)); err == nil {
			t.Errorf("key %q accepted", k)
		}
	}
	if err := p.PublishJSON("x", []byte(`{not json`)); err == nil {
		t.Error("invalid JSON accepted")
	}
	if _, err := Open(r, "zed kube", topic, Options{}); err == nil {
		t.Error("agent with a space accepted")
	}
}

// Many changes while subscribers come and go: every subscriber ends on the
// last value, and Close returns with no goroutine stuck.
func TestConcurrentChanges(t *testing.T) {
	r := testRoot(t)
	p, err := Open(r, pubsub.AgentZedKube, topic, Options{})
	if err != nil {
		t.Fatal(err)
	}
	sock := SocketPath(r, pubsub.AgentZedKube, topic)
	const n = 100
	last := `{"n":"last"}`
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < n; j++ {
				if err := p.PublishJSON("global", []byte(fmt.Sprintf(`{"n":%d}`, j))); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	subs := make([]*sub, 6)
	for i := range subs {
		subs[i] = dial(t, sock, topic)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// The writers race, so the final value is one of theirs: publish a
	// known last value.
	if err := p.PublishJSON("global", []byte(last)); err != nil {
		t.Fatal(err)
	}
	for _, s := range subs {
		s.until("last value", func() bool { return s.synced && s.value("global") == last })
	}
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(deadline):
		t.Fatal("Close did not return")
	}
	for _, s := range subs {
		s.closedByPublisher()
	}
}

// closedByPublisher reads what is still queued and then expects the end of
// the connection (not a read timeout).
func (s *sub) closedByPublisher() {
	s.t.Helper()
	for i := 0; ; i++ {
		err := s.read()
		if err == nil {
			if i > 10000 {
				s.t.Fatalf("connection still delivering after Close")
			}
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			s.t.Fatalf("connection still open after Close: %v", err)
		}
		return
	}
}

func TestDrainStatus(t *testing.T) {
	r := testRoot(t)
	writeFile(t, r.EVEHVType(), "kvm\n")
	d, err := OpenDrainStatus(r, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Set(pubsub.NodeDrainStatus{Status: pubsub.DrainStatusCordoned, RequestedBy: pubsub.DrainRequesterUpdate}); err != nil {
		t.Fatal(err)
	}
	// What baseosmgr/nodeagent/zedagent subscribe to: agent zedkube, topic
	// NodeDrainStatus, socket /run/zedkube/NodeDrainStatus.sock.
	s := dial(t, filepath.Join(r.Run, "zedkube", "NodeDrainStatus.sock"), "NodeDrainStatus")
	s.until("sync", func() bool { return s.synced })
	if s.value("global") != `{"Status":5,"RequestedBy":3}` {
		t.Errorf("subscriber sees %q", s.items)
	}
	v, ok, err := pubsub.Read[pubsub.NodeDrainStatus](r.NodeDrainStatus())
	if !ok || err != nil || v.Status != pubsub.DrainStatusCordoned {
		t.Errorf("file: %+v %v %v", v, ok, err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestDrainStatusNeverTakesZedkubeSocket (issue 16): on an EVE-k build
// zedkube owns <Run>/zedkube/NodeDrainStatus.sock, and a pillar publisher
// that finds its socket answered exits fatally. evelet must never open it
// there, whatever the timing: not before zedkube starts, not while the
// flavour is unknown, and a publication already open goes away as soon as
// zedkube's topics appear. On other builds it publishes as before. Before
// the fix OpenDrainStatus opened the socket on every build.
func TestDrainStatusNeverTakesZedkubeSocket(t *testing.T) {
	st := pubsub.NodeDrainStatus{Status: pubsub.DrainStatusNotRequested, RequestedBy: pubsub.DrainRequesterNone}
	sock := func(r pubsub.Root) string { return SocketPath(r, pubsub.AgentZedKube, pubsub.TopicNodeDrainStatus) }
	noSocket := func(t *testing.T, r pubsub.Root, d *DrainStatus, want error) {
		t.Helper()
		if err := d.Set(st); !errors.Is(err, want) {
			t.Fatalf("Set: %v, want %v", err, want)
		}
		if _, err := os.Stat(sock(r)); !os.IsNotExist(err) {
			t.Fatalf("zedkube's socket taken: %v", err)
		}
	}
	t.Run("k-hvtype", func(t *testing.T) {
		r := testRoot(t)
		writeFile(t, r.EVEHVType(), "k\n")
		writeFile(t, r.EVERelease(), "16.12.0-k-amd64\n")
		d, err := OpenDrainStatus(r, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		noSocket(t, r, d, ErrZedkubeBuild)
	})
	t.Run("k-release", func(t *testing.T) {
		r := testRoot(t)
		writeFile(t, r.EVERelease(), "16.0.1-lts-k-amd64\n")
		d, _ := OpenDrainStatus(r, Options{})
		defer d.Close()
		noSocket(t, r, d, ErrZedkubeBuild)
	})
	t.Run("k-nodeagent", func(t *testing.T) {
		r := testRoot(t)
		if err := pubsub.Write(r.NodeAgentStatus(), pubsub.NodeAgentStatus{HVTypeKube: true}); err != nil {
			t.Fatal(err)
		}
		d, _ := OpenDrainStatus(r, Options{})
		defer d.Close()
		noSocket(t, r, d, ErrZedkubeBuild)
	})
	t.Run("unknown-then-kvm", func(t *testing.T) {
		r := testRoot(t)
		d, _ := OpenDrainStatus(r, Options{})
		defer d.Close()
		noSocket(t, r, d, ErrBuildUnknown)
		writeFile(t, r.EVEHVType(), "kvm\n")
		if err := d.Set(st); err != nil {
			t.Fatal(err)
		}
		s := dial(t, sock(r), pubsub.TopicNodeDrainStatus)
		s.until("sync", func() bool { return s.synced })
		if s.value("global") != `{"Status":2,"RequestedBy":1}` {
			t.Errorf("subscriber sees %q", s.items)
		}
	})
	t.Run("kvm-then-zedkube", func(t *testing.T) {
		r := testRoot(t)
		writeFile(t, r.EVEHVType(), "kvm\n")
		d, _ := OpenDrainStatus(r, Options{})
		defer d.Close()
		if err := d.Set(st); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(sock(r)); err != nil {
			t.Fatalf("kvm build: no socket: %v", err)
		}
		writeFile(t, r.EdgeNodeClusterStatus(), "{}")
		noSocket(t, r, d, ErrZedkubeBuild)
	})
}
