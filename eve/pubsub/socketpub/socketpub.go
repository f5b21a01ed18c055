// Package socketpub publishes an EVE pubsub topic the way EVE's own
// publishers do (pillar pkg/pillar/pubsub/socketdriver): every key is a JSON
// file <Run>/<agent>/<topic>/<key>.json, and the topic is served on the unix
// SOCK_SEQPACKET socket <Run>/<agent>/<topic>.sock with socketdriver's
// request/hello/update/delete/complete/restarted messages. EVE's subscribers
// of a non-persistent topic only read the socket, so a file alone is never
// seen. docs/eve-pubsub.md describes the protocol.
//
// It is written from the protocol, not from EVE's code: evelet cannot link
// pillar, and only needs the publishing side.
package socketpub

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/internal/atomicfile"
)

// Protocol limits, as socketdriver has them.
const (
	// MaxMessage bounds one socket message: socketdriver's subscriber reads
	// into a 65536-byte buffer and drops a read that fills it, and its
	// publisher refuses (fatally) any message of 65535 bytes or more.
	MaxMessage = 65535
	// maxRequest is the publisher's read buffer for "request <topic>".
	maxRequest = 256
	// maxFileName is the longest "<key>.json" socketdriver accepts.
	maxFileName = 255
	// restartedFile holds the restart counter in the topic directory.
	restartedFile = "restarted"
	// dirMode is what socketdriver creates the topic and socket
	// directories with; fileMode is what its temp-then-rename files get
	// (os.CreateTemp's 0600).
	dirMode  = 0o700
	fileMode = 0o600
)

// SocketPath is where the publisher of agent/topic listens:
// <Run>/<agent>/<topic>.sock (socketdriver's <root>/var/run/<name>.sock;
// /var/run is /run on EVE).
func SocketPath(root pubsub.Root, agent, topic string) string {
	return filepath.Join(root.Run, agent, topic+".sock")
}

// Options tune a Publication. The zero value is usable.
type Options struct {
	// Log receives connection-level problems (a subscriber that sends a
	// bad request, a write that fails). Default: logrus.StandardLogger().
	Log logrus.FieldLogger
	// WriteTimeout bounds one socket write; a subscriber that does not
	// read for this long is disconnected (it reconnects and resyncs).
	// Default 30 s.
	WriteTimeout time.Duration
}

// Publication is one topic being published. Its methods are safe for
// concurrent use.
type Publication struct {
	agent, topic string
	dir, socket  string
	log          logrus.FieldLogger
	writeTimeout time.Duration

	ln   *net.UnixListener
	done chan struct{}
	wg   sync.WaitGroup

	mu        sync.Mutex
	nconn     int               // connections accepted so far, to tell them apart in logs
	items     map[string][]byte // key -> JSON, what subscribers are served
	restarted int
	subs      map[chan struct{}]bool // wake-up channel of each subscriber being served
	conns     map[net.Conn]bool      // every open connection, closed by Close
	closed    bool
	closeOnce sync.Once
}

// Open starts publishing agent/topic under root: it creates the topic
// directory (0700) if missing, loads the keys and restart counter a
// previous run left there (so a restarted evelet serves what it served
// before, as socketdriver's publisher does), and listens on the socket. A
// socket file left by a dead publisher is replaced; one that a live
// process answers on is an error. Only non-persistent publications (files
// under <Run>) are supported: evelet publishes nothing persistent for EVE.
func Open(root pubsub.Root, agent, topic string, opts Options) (*Publication, error) {
	if err := checkName("agent", agent); err != nil {
		return nil, err
	}
	if err := checkName("topic", topic); err != nil {
		return nil, err
	}
	p := &Publication{
		agent:        agent,
		topic:        topic,
		dir:          root.TopicDir(agent, topic),
		socket:       SocketPath(root, agent, topic),
		log:          opts.Log,
		writeTimeout: opts.WriteTimeout,
		done:         make(chan struct{}),
		items:        map[string][]byte{},
		subs:         map[chan struct{}]bool{},
		conns:        map[net.Conn]bool{},
	}
	if p.log == nil {
		p.log = logrus.StandardLogger()
	}
	p.log = p.log.WithField("topic", agent+"/"+topic)
	if p.writeTimeout <= 0 {
		p.writeTimeout = 30 * time.Second
	}
	if err := os.MkdirAll(p.dir, dirMode); err != nil {
		return nil, fmt.Errorf("eve pubsub %s/%s: create %s: %w", agent, topic, p.dir, err)
	}
	if err := p.load(); err != nil {
		return nil, err
	}
	ln, err := listen(p.socket)
	if err != nil {
		return nil, fmt.Errorf("eve pubsub %s/%s: %w", agent, topic, err)
	}
	p.ln = ln
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

func checkName(what, s string) error {
	if s == "" || strings.ContainsAny(s, " /\x00") {
		return fmt.Errorf("eve pubsub: %s %q must be non-empty without spaces or slashes", what, s)
	}
	return nil
}

// load reads what a previous run published: every non-empty <key>.json
// that is valid JSON, and the restart counter.
func (p *Publication) load() error {
	ents, err := os.ReadDir(p.dir)
	if err != nil {
		return fmt.Errorf("eve pubsub %s/%s: read %s: %w", p.agent, p.topic, p.dir, err)
	}
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(p.dir, name)
		switch {
		case name == restartedFile:
			b, err := os.ReadFile(path)
			if err != nil {
				p.log.Warnf("restart counter %s: %v; starting at 0", path, err)
				continue
			}
			n, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				n = 1 // as socketdriver: present but unreadable means restarted once
			}
			p.restarted = n
		case e.IsDir() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json"):
		default:
			b, err := os.ReadFile(path)
			if err != nil || len(b) == 0 || !json.Valid(b) {
				p.log.Warnf("not serving %s left by an earlier run: unreadable, empty or not JSON (%v)", path, err)
				continue
			}
			p.items[strings.TrimSuffix(name, ".json")] = b
		}
	}
	return nil
}

// listen binds the socket, replacing a stale one.
func listen(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), dirMode); err != nil {
		return nil, fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket; remove it if nothing should be there", path)
		}
		if c, err := net.Dial("unixpacket", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is already served by a running process (zedkube or another evelet?); stop it first", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	return ln, nil
}

// Dir is the topic directory, Socket the socket path.
func (p *Publication) Dir() string    { return p.dir }
func (p *Publication) Socket() string { return p.socket }

// Publish encodes v with encoding/json (as EVE does) and publishes it
// under key.
func (p *Publication) Publish(key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("eve pubsub %s/%s key %s: encode: %w", p.agent, p.topic, key, err)
	}
	return p.PublishJSON(key, b)
}

// PublishJSON publishes an already encoded value: the file is written
// (temp then rename) before subscribers are told, so a failed write
// changes nothing. Publishing the same bytes again sends nothing.
func (p *Publication) PublishJSON(key string, b []byte) error {
	if err := p.checkKey(key); err != nil {
		return err
	}
	if len(b) == 0 || !json.Valid(b) {
		return fmt.Errorf("eve pubsub %s/%s key %s: value is not JSON", p.agent, p.topic, key)
	}
	if n := len(updateMessage(p.topic, key, b)); n >= MaxMessage {
		return fmt.Errorf("eve pubsub %s/%s key %s: %d bytes of JSON make a %d-byte update message; EVE's socket protocol allows less than %d",
			p.agent, p.topic, key, len(b), n, MaxMessage)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return p.errClosed()
	}
	if old, ok := p.items[key]; ok && bytes.Equal(old, b) {
		return nil
	}
	if err := atomicfile.WriteFile(filepath.Join(p.dir, key+".json"), b, fileMode); err != nil {
		return fmt.Errorf("eve pubsub %s/%s: %w", p.agent, p.topic, err)
	}
	p.items[key] = append([]byte(nil), b...)
	p.notifyLocked()
	return nil
}

// Unpublish removes key: its file goes, and subscribers get a delete. An
// unknown key is not an error.
func (p *Publication) Unpublish(key string) error {
	if err := p.checkKey(key); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return p.errClosed()
	}
	if err := os.Remove(filepath.Join(p.dir, key+".json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("eve pubsub %s/%s: unpublish %s: %w", p.agent, p.topic, key, err)
	}
	syncDir(p.dir)
	if _, ok := p.items[key]; ok {
		delete(p.items, key)
		p.notifyLocked()
	}
	return nil
}

// SignalRestarted counts one more restart of the publishing agent: the
// counter is kept in <dir>/restarted and sent to subscribers, which run
// their restart handlers (EVE's pub.SignalRestarted).
func (p *Publication) SignalRestarted() error {
	return p.setRestarted(func(n int) int { return n + 1 })
}

// ClearRestarted sets the restart counter back to 0 and removes the file
// (EVE's pub.ClearRestarted); connected subscribers that had seen a
// non-zero counter get "restarted <topic> 0".
func (p *Publication) ClearRestarted() error {
	return p.setRestarted(func(int) int { return 0 })
}

func (p *Publication) setRestarted(next func(int) int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return p.errClosed()
	}
	n := next(p.restarted)
	if n == p.restarted {
		return nil
	}
	path := filepath.Join(p.dir, restartedFile)
	var err error
	if n == 0 {
		if err = os.Remove(path); errors.Is(err, fs.ErrNotExist) {
			err = nil
		}
	} else {
		err = atomicfile.WriteFile(path, []byte(strconv.Itoa(n)), fileMode)
	}
	if err != nil {
		return fmt.Errorf("eve pubsub %s/%s: restart counter: %w", p.agent, p.topic, err)
	}
	p.restarted = n
	p.notifyLocked()
	return nil
}

// Close stops serving: the socket is removed and every subscriber
// connection closed (EVE's subscribers then retry until a publisher is
// back). The files stay, like after a process exit, so the next Open
// serves the same keys. Close waits for its goroutines and is idempotent.
func (p *Publication) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		close(p.done)
		for c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.ln.Close() // also unlinks the socket file
	})
	p.wg.Wait()
	return nil
}

func (p *Publication) errClosed() error {
	return fmt.Errorf("eve pubsub %s/%s: publication is closed", p.agent, p.topic)
}

func (p *Publication) checkKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("eve pubsub %s/%s: empty key", p.agent, p.topic)
	case strings.ContainsAny(key, "/\x00"), key == ".", key == "..", strings.HasPrefix(key, "."):
		return fmt.Errorf("eve pubsub %s/%s: key %q must not contain slashes or start with a dot", p.agent, p.topic, key)
	case len(key)+len(".json") > maxFileName:
		return fmt.Errorf("eve pubsub %s/%s: key %q makes a file name longer than %d bytes", p.agent, p.topic, key, maxFileName)
	}
	return nil
}

// notifyLocked wakes every subscriber goroutine; a wake-up already pending
// is enough, since each one diffs against the whole current state.
func (p *Publication) notifyLocked() {
	for ch := range p.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (p *Publication) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.AcceptUnix()
		if err != nil {
			select {
			case <-p.done:
				return
			default:
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				p.log.Warnf("accept: %v; retrying", err)
				select {
				case <-p.done:
					return
				case <-time.After(100 * time.Millisecond):
				}
				continue
			}
			p.log.Errorf("accept on %s: %v; no longer serving subscribers", p.socket, err)
			return
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		p.conns[c] = true
		p.nconn++
		id := p.nconn
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(c, id)
	}
}

// serve runs one subscriber: read its request, say hello, send every
// current key and "complete", then the restart counter if set, then each
// change as it happens.
func (p *Publication) serve(c *net.UnixConn, id int) {
	defer p.wg.Done()
	defer func() {
		c.Close()
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
	}()
	log := p.log.WithField("subscriber", id)

	buf := make([]byte, maxRequest)
	_ = c.SetReadDeadline(time.Now().Add(p.writeTimeout))
	n, err := c.Read(buf)
	if err != nil {
		log.Debugf("no request: %v", err)
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	if n == len(buf) {
		log.Warnf("request of %d bytes or more refused (likely truncated)", n)
		return
	}
	if f := strings.Split(string(buf[:n]), " "); len(f) != 2 || f[0] != "request" || f[1] != p.topic {
		log.Warnf("refusing request %q: want %q", buf[:n], "request "+p.topic)
		return
	}

	// Register before taking the first snapshot so no change is missed.
	wake := make(chan struct{}, 1)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.subs[wake] = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.subs, wake)
		p.mu.Unlock()
	}()

	// The subscriber sends nothing after its request; reading tells us
	// promptly when it goes away.
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		b := make([]byte, maxRequest)
		for {
			if _, err := c.Read(b); err != nil {
				return
			}
		}
	}()
	defer func() { c.Close(); <-gone }()

	send := func(msg []byte) bool {
		_ = c.SetWriteDeadline(time.Now().Add(p.writeTimeout))
		if _, err := c.Write(msg); err != nil {
			log.Debugf("write: %v", err)
			return false
		}
		return true
	}
	if !send([]byte("hello " + p.topic + " false")) {
		return
	}
	sent := map[string][]byte{}
	sentRestarted := 0
	first := true
	for {
		msgs, restarted := p.diff(sent)
		for _, m := range msgs {
			if !send(m) {
				return
			}
		}
		if first {
			if !send([]byte("complete " + p.topic)) {
				return
			}
			first = false
		}
		// As socketdriver: any change of the counter is sent, 0 included,
		// but a new subscriber is not told about a 0.
		if restarted != sentRestarted {
			if !send([]byte("restarted " + p.topic + " " + strconv.Itoa(restarted))) {
				return
			}
			sentRestarted = restarted
		}
		select {
		case <-wake:
		case <-gone:
			return
		case <-p.done:
			return
		}
	}
}

// diff brings sent up to the current state and returns the messages that
// do it (deletes first, then updates, each in key order) and the restart
// counter.
func (p *Publication) diff(sent map[string][]byte) ([][]byte, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var dels, ups []string
	for k := range sent {
		if _, ok := p.items[k]; !ok {
			dels = append(dels, k)
		}
	}
	for k, v := range p.items {
		if old, ok := sent[k]; !ok || !bytes.Equal(old, v) {
			ups = append(ups, k)
		}
	}
	sort.Strings(dels)
	sort.Strings(ups)
	msgs := make([][]byte, 0, len(dels)+len(ups))
	for _, k := range dels {
		delete(sent, k)
		msgs = append(msgs, []byte("delete "+p.topic+" "+b64([]byte(k))))
	}
	for _, k := range ups {
		sent[k] = p.items[k]
		msgs = append(msgs, updateMessage(p.topic, k, p.items[k]))
	}
	return msgs, p.restarted
}

// updateMessage is "update <topic> <base64 key> <base64 JSON>": both are
// base64 (standard, padded) because the message is split on spaces.
func updateMessage(topic, key string, val []byte) []byte {
	return []byte("update " + topic + " " + b64([]byte(key)) + " " + b64(val))
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
