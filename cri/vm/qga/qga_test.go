package qga

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// fakeAgent is a scripted guest agent on a unix socket: answer gets each
// request and returns the raw bytes to write back (nil: no answer).
type fakeAgent struct {
	path    string
	onConn  []byte // written as soon as a client connects (stale output)
	answer  func(req map[string]any) []byte
	mu      sync.Mutex
	reqs    []map[string]any
	ln      net.Listener
	silence bool
	// stream, if set, may write an answer of any size itself (true: done).
	stream func(req map[string]any, w io.Writer) bool
	// beforeSync, if set, writes stale output before the sync answer.
	beforeSync func(w io.Writer)
}

func startAgent(t *testing.T, a *fakeAgent) *fakeAgent {
	t.Helper()
	a.path = filepath.Join(t.TempDir(), "qga.sock")
	ln, err := net.Listen("unix", a.path)
	if err != nil {
		t.Fatal(err)
	}
	a.ln = ln
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go a.serve(c)
		}
	}()
	return a
}

func (a *fakeAgent) serve(c net.Conn) {
	defer c.Close()
	if a.onConn != nil {
		c.Write(a.onConn)
	}
	dec := json.NewDecoder(bufio.NewReader(dropDelimiters{c}))
	for {
		var req map[string]any
		if err := dec.Decode(&req); err != nil {
			return
		}
		a.mu.Lock()
		a.reqs = append(a.reqs, req)
		a.mu.Unlock()
		if a.silence {
			continue
		}
		if req["execute"] == "guest-sync-delimited" {
			id := req["arguments"].(map[string]any)["id"]
			if a.beforeSync != nil {
				a.beforeSync(c)
			}
			b, _ := json.Marshal(map[string]any{"return": id})
			c.Write(append(append([]byte{delimiter}, b...), '\n'))
			continue
		}
		if a.stream != nil && a.stream(req, c) {
			continue
		}
		if b := a.answer(req); b != nil {
			c.Write(append(b, '\n'))
		}
	}
}

func ret(v any) []byte {
	b, _ := json.Marshal(map[string]any{"return": v})
	return b
}

func TestSyncSkipsStaleOutputThenPing(t *testing.T) {
	a := startAgent(t, &fakeAgent{
		// An earlier client's answers, one cut off, and an old delimited sync.
		onConn: []byte("{\"return\": {}}\n{\"return\": {\"pid\": 4\xff{\"return\": 12345}\n{\"ret"),
		answer: func(req map[string]any) []byte {
			if req["execute"] == "guest-ping" {
				return ret(map[string]any{})
			}
			return nil
		},
	})
	ctx := context.Background()
	c, err := Dial(ctx, a.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestNoAgentWithinTimeout(t *testing.T) {
	a := startAgent(t, &fakeAgent{silence: true})
	start := time.Now()
	_, err := DialTimeout(context.Background(), a.path, 300*time.Millisecond)
	if !errors.Is(err, ErrNoAgent) {
		t.Fatalf("Dial to a silent channel: %v, want ErrNoAgent", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("ErrNoAgent after %v, want about the 300ms timeout", d)
	}
	if !strings.Contains(err.Error(), "no QEMU guest agent") {
		t.Errorf("error %q does not say the guest runs no agent", err)
	}
	// A second client is not blocked by the failed one.
	if _, err := DialTimeout(context.Background(), a.path, 100*time.Millisecond); !errors.Is(err, ErrNoAgent) {
		t.Errorf("second Dial: %v", err)
	}
}

func TestExecPollsUntilExitAndDecodesOutput(t *testing.T) {
	polls := 0
	a := startAgent(t, &fakeAgent{answer: func(req map[string]any) []byte {
		switch req["execute"] {
		case "guest-exec":
			return ret(map[string]int{"pid": 42})
		case "guest-exec-status":
			polls++
			if polls < 3 {
				return ret(map[string]any{"exited": false})
			}
			return ret(map[string]any{"exited": true, "exitcode": 3,
				"out-data": base64.StdEncoding.EncodeToString([]byte("hi\n")),
				"err-data": base64.StdEncoding.EncodeToString([]byte("oops"))})
		}
		return nil
	}})
	ctx := context.Background()
	c, err := Dial(ctx, a.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := c.Exec(ctx, ExecRequest{Path: "/bin/sh", Args: []string{"-c", "x"}, Env: []string{"A=1"}, Stdin: []byte("in")})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 3 || string(res.Stdout) != "hi\n" || string(res.Stderr) != "oops" || polls != 3 {
		t.Errorf("result %+v after %d polls", res, polls)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var exec map[string]any
	for _, r := range a.reqs {
		if r["execute"] == "guest-exec" {
			exec = r["arguments"].(map[string]any)
		}
	}
	in, _ := base64.StdEncoding.DecodeString(exec["input-data"].(string))
	if exec["path"] != "/bin/sh" || exec["capture-output"] != true || string(in) != "in" ||
		exec["arg"].([]any)[1] != "x" || exec["env"].([]any)[0] != "A=1" {
		t.Errorf("guest-exec arguments %v", exec)
	}
}

func TestExecErrorsAndSignals(t *testing.T) {
	a := startAgent(t, &fakeAgent{answer: func(req map[string]any) []byte {
		switch req["execute"] {
		case "guest-exec":
			if req["arguments"].(map[string]any)["path"] == "/nope" {
				return []byte(`{"error": {"class": "GenericError", "desc": "Failed to execute child process /nope"}}`)
			}
			return ret(map[string]int{"pid": 7})
		case "guest-exec-status":
			return ret(map[string]any{"exited": true, "signal": 9})
		}
		return nil
	}})
	ctx := context.Background()
	c, err := Dial(ctx, a.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Exec(ctx, ExecRequest{Path: "/nope"})
	var ae *AgentError
	if !errors.As(err, &ae) || !strings.Contains(ae.Desc, "/nope") {
		t.Errorf("exec of a missing binary: %v, want an AgentError naming it", err)
	}
	res, err := c.Exec(ctx, ExecRequest{Path: "/bin/kill-me"})
	if err != nil || res.ExitCode != 137 {
		t.Errorf("killed process: %+v, %v; want exit code 137", res, err)
	}
	if _, err := c.Exec(ctx, ExecRequest{}); err == nil {
		t.Error("empty command accepted")
	}
}

func TestOneClientPerChannel(t *testing.T) {
	a := startAgent(t, &fakeAgent{answer: func(map[string]any) []byte { return ret(map[string]any{}) }})
	ctx := context.Background()
	c1, err := Dial(ctx, a.path)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := Dial(short, a.path); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Dial while the first holds the channel: %v, want it to wait", err)
	}
	c1.Close()
	c2, err := Dial(ctx, a.path)
	if err != nil {
		t.Fatalf("Dial after Close: %v", err)
	}
	c2.Close()
}

// TestRealAgent speaks to Debian's qemu-guest-agent, run on this host
// (the protocol is the same as in a guest; the in-guest run is in the QEMU
// tests of cri/vm/vmnet).
func TestRealAgent(t *testing.T) {
	bin, err := exec.LookPath("qemu-ga")
	if err != nil {
		t.Skip("qemu-ga is not installed (hack/install-prereqs.sh installs qemu-guest-agent)")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "qga.sock")
	cmd := exec.Command(bin, "-m", "unix-listen", "-p", sock, "-t", dir, "-f", filepath.Join(dir, "pid"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var c *Client
	err = wait.PollUntilContextCancel(ctx, 20*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		c, err = Dial(ctx, sock) // fails until qemu-ga has made its socket
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil || info.Version == "" || len(info.Commands) == 0 {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	res, err := c.Exec(ctx, ExecRequest{Path: "sh", Args: []string{"-c", "read x; echo got $x; echo $GREETING >&2; exit 4"}, Env: []string{"GREETING=hello"}, Stdin: []byte("line\n")})
	if err != nil || res.ExitCode != 4 || string(res.Stdout) != "got line\n" || string(res.Stderr) != "hello\n" {
		t.Errorf("Exec = %+v (%q, %q), %v", res, res.Stdout, res.Stderr, err)
	}
	// A second session after the first: Sync resynchronises.
	c.Close()
	c2, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}
