// Package qga is a client for the QEMU guest agent protocol (QMP-style JSON
// over the virtio-serial port org.qemu.guest_agent.0, which QEMU exposes on
// the host as a unix socket). It is what kubectl exec into a VM pod uses:
// guest-exec with captured output, polled with guest-exec-status.
//
// go-qemu's qmp package speaks QMP to QEMU itself (greeting, capabilities
// negotiation) and has no guest-sync handshake, so the guest agent's
// dialect is spoken here directly.
package qga

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
)

// ErrNoAgent means nothing in the guest answered guest-sync in time: the
// guest runs no agent (or it has not started yet).
var ErrNoAgent = errors.New("qga: the guest runs no QEMU guest agent (no answer to guest-sync)")

// DefaultSyncTimeout is how long Dial waits for the agent's guest-sync answer.
const DefaultSyncTimeout = 3 * time.Second

// Everything the guest sends is the tenant's: an answer is read only up to
// MaxAnswer bytes, and all clients in the process together read at most
// maxAnswersInFlight answers at once, so a hostile guest agent costs the
// evelet agent a bounded amount of memory however much it sends.
const (
	// MaxAnswer is the largest answer read from a guest agent: 4 MiB of
	// JSON, so about 3 MiB of exec output (stdout and stderr together,
	// base64 in the answer). The real agent captures up to 16 MB per stream.
	MaxAnswer          = 4 << 20
	maxAnswersInFlight = 4
)

// ErrAnswerTooLarge means the guest agent sent an answer over MaxAnswer.
var ErrAnswerTooLarge = fmt.Errorf("the guest agent's answer is over %d MiB, the most evelet reads from a guest (exec output included)", MaxAnswer>>20)

var answerBudget = semaphore.NewWeighted(maxAnswersInFlight * MaxAnswer)

// holdAnswer takes one answer's share of the process-wide budget.
func holdAnswer(ctx context.Context, cmd string) (release func(), err error) {
	if err := answerBudget.Acquire(ctx, MaxAnswer); err != nil {
		return nil, fmt.Errorf("qga: %s: wait for other guest-agent answers to be read: %w", cmd, err)
	}
	return func() { answerBudget.Release(MaxAnswer) }, nil
}

// answerLimit passes at most left bytes, then fails with ErrAnswerTooLarge;
// the client resets left before each answer.
type answerLimit struct {
	r    io.Reader
	left int64
}

func (l *answerLimit) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, ErrAnswerTooLarge
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

// AgentError is an error the agent returned for a command.
type AgentError struct {
	Command, Class, Desc string
}

func (e *AgentError) Error() string {
	return fmt.Sprintf("qga: %s: %s (%s)", e.Command, e.Desc, e.Class)
}

// delimiter is the byte guest-sync-delimited puts before its answer and that
// a client sends to make the agent drop a half-read request.
const delimiter = 0xFF

// The agent's channel is one byte stream shared by everyone who connects to
// the socket; two clients at once would read each other's answers. Within
// this process one Client per socket at a time holds it.
var (
	locksMu sync.Mutex
	locks   = map[string]chan struct{}{}
)

func lockFor(path string) chan struct{} {
	locksMu.Lock()
	defer locksMu.Unlock()
	l, ok := locks[path]
	if !ok {
		l = make(chan struct{}, 1)
		locks[path] = l
	}
	return l
}

// Client is one session with a guest agent. Not for concurrent use.
type Client struct {
	conn   net.Conn
	lim    *answerLimit
	dec    *json.Decoder
	unlock func()
	closed bool
	// broken is set once the stream is out of step (an answer cut at
	// MaxAnswer): every later call fails with it.
	broken error
}

// Dial connects to the agent's socket and synchronises with it (Sync);
// ErrNoAgent if it does not answer within DefaultSyncTimeout.
func Dial(ctx context.Context, path string) (*Client, error) {
	return DialTimeout(ctx, path, DefaultSyncTimeout)
}

// DialTimeout is Dial with the guest-sync timeout given.
func DialTimeout(ctx context.Context, path string, syncTimeout time.Duration) (*Client, error) {
	l := lockFor(path)
	select {
	case l <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("qga: wait for the agent channel %s: %w", path, ctx.Err())
	}
	var once sync.Once
	unlock := func() { once.Do(func() { <-l }) }
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		unlock()
		return nil, fmt.Errorf("qga: %w", err)
	}
	c := &Client{conn: conn, unlock: unlock}
	sctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	if err := c.Sync(sctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close ends the session and frees the channel for the next client.
func (c *Client) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	err := c.conn.Close()
	c.unlock()
	return err
}

// dropDelimiters removes the 0xFF bytes guest-sync-delimited puts in the
// stream (never valid in JSON), so one decoder reads the answers around them.
type dropDelimiters struct{ r io.Reader }

func (d dropDelimiters) Read(p []byte) (int, error) {
	for {
		n, err := d.r.Read(p)
		j := 0
		for _, b := range p[:n] {
			if b != delimiter {
				p[j] = b
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}

type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
}

type response struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// deadline applies ctx's deadline to the connection; no deadline clears it.
// A cancelled ctx (without deadline) unblocks the connection at once.
func (c *Client) deadline(ctx context.Context) func() {
	if d, ok := ctx.Deadline(); ok {
		c.conn.SetDeadline(d)
	} else {
		c.conn.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	return func() { stop() }
}

func (c *Client) send(prefix []byte, req request) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	_, err = c.conn.Write(append(append(prefix, b...), '\n'))
	return err
}

// Sync flushes whatever an earlier client left in the channel: it sends the
// delimiter byte (the agent drops any half-read request) and
// guest-sync-delimited with a random id, then skips everything up to a
// delimiter and every answer until the one carrying that id. No answer
// before ctx ends: ErrNoAgent.
func (c *Client) Sync(ctx context.Context) error {
	defer c.deadline(ctx)()
	id := rand.Int64N(1 << 52) // exact in the agent's JSON numbers
	if err := c.send([]byte{delimiter}, request{Execute: "guest-sync-delimited", Arguments: map[string]int64{"id": id}}); err != nil {
		return fmt.Errorf("qga: guest-sync: %w", err)
	}
	noAnswer := func(err error) error {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || ctx.Err() != nil || errors.Is(err, io.EOF) {
			return ErrNoAgent
		}
		return fmt.Errorf("qga: guest-sync: %w", err)
	}
	release, err := holdAnswer(ctx, "guest-sync")
	if err != nil {
		return err
	}
	defer release()
	br := bufio.NewReader(c.conn)
	for {
		if err := skipPast(br, delimiter); err != nil {
			return noAnswer(err)
		}
		lim := &answerLimit{r: br, left: MaxAnswer}
		dec := json.NewDecoder(lim)
		var r response
		err := dec.Decode(&r)
		rest := io.MultiReader(dec.Buffered(), br)
		var se *json.SyntaxError
		switch {
		case errors.As(err, &se), errors.Is(err, ErrAnswerTooLarge):
			// Stale half-written or oversized output: skip to the next
			// delimiter.
		case err != nil:
			return noAnswer(err)
		default:
			var got int64
			if r.Error == nil && json.Unmarshal(r.Return, &got) == nil && got == id {
				c.lim = &answerLimit{r: rest}
				c.dec = json.NewDecoder(dropDelimiters{c.lim})
				return nil
			}
		}
		br = bufio.NewReader(rest)
	}
}

// skipPast discards br's bytes up to and including the first delim,
// holding no more than br's buffer.
func skipPast(br *bufio.Reader, delim byte) error {
	for {
		_, err := br.ReadSlice(delim)
		if err != bufio.ErrBufferFull {
			return err
		}
	}
}

// call sends one command and decodes its answer into out (if not nil).
func (c *Client) call(ctx context.Context, cmd string, args any, out any) error {
	release, err := holdAnswer(ctx, cmd)
	if err != nil {
		return err
	}
	defer release()
	return c.callHeld(ctx, cmd, args, out)
}

// callHeld is call with the answer's budget already held by the caller.
func (c *Client) callHeld(ctx context.Context, cmd string, args any, out any) error {
	if c.broken != nil {
		return fmt.Errorf("qga: %s: %w", cmd, c.broken)
	}
	defer c.deadline(ctx)()
	if err := c.send(nil, request{Execute: cmd, Arguments: args}); err != nil {
		return fmt.Errorf("qga: %s: %w", cmd, err)
	}
	var r response
	c.lim.left = MaxAnswer
	if err := c.dec.Decode(&r); err != nil {
		if errors.Is(err, ErrAnswerTooLarge) {
			c.broken = err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("qga: %s: %w", cmd, ctx.Err())
		}
		return fmt.Errorf("qga: %s: %w", cmd, err)
	}
	if r.Error != nil {
		return &AgentError{Command: cmd, Class: r.Error.Class, Desc: r.Error.Desc}
	}
	if out != nil {
		if err := json.Unmarshal(r.Return, out); err != nil {
			return fmt.Errorf("qga: %s answer %s: %w", cmd, r.Return, err)
		}
	}
	return nil
}

// Ping checks the agent answers (guest-ping).
func (c *Client) Ping(ctx context.Context) error {
	return c.call(ctx, "guest-ping", nil, nil)
}

// Info is guest-info's answer (the parts callers use).
type Info struct {
	Version  string `json:"version"`
	Commands []struct {
		Name    string `json:"name"`
		Enabled bool   `json:"enabled"`
	} `json:"supported_commands"`
}

// Info asks the agent for its version and commands (guest-info).
func (c *Client) Info(ctx context.Context) (*Info, error) {
	var i Info
	if err := c.call(ctx, "guest-info", nil, &i); err != nil {
		return nil, err
	}
	return &i, nil
}

// Shutdown asks the agent to power the guest off (guest-shutdown). The
// agent sends no answer to it, so none is awaited.
func (c *Client) Shutdown(ctx context.Context) error {
	defer c.deadline(ctx)()
	if err := c.send(nil, request{Execute: "guest-shutdown", Arguments: map[string]string{"mode": "powerdown"}}); err != nil {
		return fmt.Errorf("qga: guest-shutdown: %w", err)
	}
	return nil
}

// ExecRequest is a command to run in the guest.
type ExecRequest struct {
	Path  string
	Args  []string
	Env   []string
	Stdin []byte
}

// ExecResult is how it ended. A process killed by a signal has ExitCode
// 128+signal, as a shell reports it.
type ExecResult struct {
	ExitCode       int
	Stdout, Stderr []byte
	// Truncated is set when the agent cut the captured output.
	Truncated bool
}

type execArgs struct {
	Path          string   `json:"path"`
	Arg           []string `json:"arg,omitempty"`
	Env           []string `json:"env,omitempty"`
	InputData     string   `json:"input-data,omitempty"`
	CaptureOutput bool     `json:"capture-output"`
}

type execStatus struct {
	Exited       bool   `json:"exited"`
	ExitCode     *int   `json:"exitcode"`
	Signal       *int   `json:"signal"`
	OutData      string `json:"out-data"`
	ErrData      string `json:"err-data"`
	OutTruncated bool   `json:"out-truncated"`
	ErrTruncated bool   `json:"err-truncated"`
}

// Exec runs a command in the guest (guest-exec with captured output) and
// polls guest-exec-status until it exits or ctx ends. The agent hands the
// output over only once the process has exited.
func (c *Client) Exec(ctx context.Context, req ExecRequest) (ExecResult, error) {
	if req.Path == "" {
		return ExecResult{}, errors.New("qga: guest-exec: empty command")
	}
	a := execArgs{Path: req.Path, Arg: req.Args, Env: req.Env, CaptureOutput: true}
	if len(req.Stdin) > 0 {
		a.InputData = base64.StdEncoding.EncodeToString(req.Stdin)
	}
	var started struct {
		PID int `json:"pid"`
	}
	if err := c.call(ctx, "guest-exec", a, &started); err != nil {
		return ExecResult{}, err
	}
	wait := 5 * time.Millisecond
	for {
		res, exited, err := c.execStatus(ctx, started.PID)
		if err != nil || exited {
			return res, err
		}
		select {
		case <-ctx.Done():
			return ExecResult{}, fmt.Errorf("qga: guest process %d still running: %w", started.PID, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(wait*2, 200*time.Millisecond)
	}
}

// execStatus polls the process once; the answer's budget is held until its
// output is decoded.
func (c *Client) execStatus(ctx context.Context, pid int) (ExecResult, bool, error) {
	release, err := holdAnswer(ctx, "guest-exec-status")
	if err != nil {
		return ExecResult{}, false, err
	}
	defer release()
	var st execStatus
	if err := c.callHeld(ctx, "guest-exec-status", map[string]int{"pid": pid}, &st); err != nil {
		return ExecResult{}, false, err
	}
	if !st.Exited {
		return ExecResult{}, false, nil
	}
	res, err := st.result()
	return res, true, err
}

func (st *execStatus) result() (ExecResult, error) {
	var r ExecResult
	var err error
	if r.Stdout, err = base64.StdEncoding.DecodeString(st.OutData); err != nil {
		return r, fmt.Errorf("qga: guest-exec-status out-data: %w", err)
	}
	if r.Stderr, err = base64.StdEncoding.DecodeString(st.ErrData); err != nil {
		return r, fmt.Errorf("qga: guest-exec-status err-data: %w", err)
	}
	switch {
	case st.ExitCode != nil:
		r.ExitCode = *st.ExitCode
	case st.Signal != nil:
		r.ExitCode = 128 + *st.Signal
	}
	r.Truncated = st.OutTruncated || st.ErrTruncated
	return r, nil
}
