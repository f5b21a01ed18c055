// Package socketsub is an EVE pubsub subscriber for tests, written from the
// protocol (docs/eve-pubsub.md, socketdriver's subscriber) and not with
// evelet's publisher code: dial the topic's SOCK_SEQPACKET socket, send
// "request <topic>", then every read is one message of space-separated
// words ("hello", "update <topic> <b64 key> <b64 value>", "delete",
// "complete", "restarted"); keys and values are standard base64. It
// reconnects when the publisher goes away (an agent restart or a reboot),
// as EVE's subscribers do. The same protocol reader exists inside
// eve/pubsub/socketpub's tests, tied to *testing.T there.
package socketsub

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// Sub follows one topic. Values are kept per key; History holds every
// update's value in arrival order.
type Sub struct {
	path, topic string

	mu      sync.Mutex
	items   map[string]string
	history []string
	err     error
	changed chan struct{}
}

// Follow subscribes to topic on the socket at path until ctx ends,
// reconnecting whenever the socket is missing or the publisher closes it.
func Follow(ctx context.Context, path, topic string) *Sub {
	s := &Sub{path: path, topic: topic, items: map[string]string{}, changed: make(chan struct{})}
	go s.run(ctx)
	return s
}

func (s *Sub) run(ctx context.Context) {
	for ctx.Err() == nil {
		err := s.session(ctx)
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond): // the publisher restarts
		}
	}
}

func (s *Sub) session(ctx context.Context) error {
	c, err := net.Dial("unixpacket", s.path)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if _, err := c.Write([]byte("request " + s.topic)); err != nil {
		return err
	}
	buf := make([]byte, 1<<16)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		if n == 0 {
			return errors.New("publisher closed the connection")
		}
		if err := s.apply(string(buf[:n])); err != nil {
			return err
		}
	}
}

func (s *Sub) apply(msg string) error {
	f := strings.Split(msg, " ")
	if len(f) < 2 || f[1] != s.topic {
		return fmt.Errorf("message %q: want <kind> %s ...", msg, s.topic)
	}
	dec := func(x string) (string, error) {
		b, err := base64.StdEncoding.DecodeString(x)
		return string(b), err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch f[0] {
	case "hello", "complete", "restarted":
	case "update":
		if len(f) != 4 {
			return fmt.Errorf("update %q has %d words, want 4", msg, len(f))
		}
		k, err := dec(f[2])
		if err != nil {
			return err
		}
		v, err := dec(f[3])
		if err != nil {
			return err
		}
		if s.items[k] == v {
			return nil // a resync after reconnecting repeats the value
		}
		s.items[k] = v
		s.history = append(s.history, v)
	case "delete":
		if len(f) != 3 {
			return fmt.Errorf("delete %q has %d words, want 3", msg, len(f))
		}
		k, err := dec(f[2])
		if err != nil {
			return err
		}
		delete(s.items, k)
	default:
		return fmt.Errorf("unknown message %q", msg)
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return nil
}

// Value is the current value of key ("" if none).
func (s *Sub) Value(key string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.items[key]
}

// History is every distinct value received, in order.
func (s *Sub) History() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.history...)
}

// Wait blocks until cond(value of key) holds or ctx ends.
func (s *Sub) Wait(ctx context.Context, key string, cond func(string) bool) error {
	for {
		s.mu.Lock()
		v, ch, last := s.items[key], s.changed, s.err
		s.mu.Unlock()
		if cond(v) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s %q: last value %q, history %q, last connection error %v: %w", s.topic, key, v, s.History(), last, ctx.Err())
		case <-ch:
		}
	}
}
