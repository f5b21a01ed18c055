package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// agentPort is the virtio-serial port name QEMU's guest agent uses.
const agentPort = "org.qemu.guest_agent.0"

// agentCommands is the subset of the QEMU guest agent protocol answered.
var agentCommands = []string{
	"guest-sync", "guest-sync-delimited", "guest-ping", "guest-info",
	"guest-exec", "guest-exec-status", "guest-shutdown",
}

// maxCapture bounds the output kept per guest-exec stream.
const maxCapture = 16 << 20

// findAgentPort finds the /dev/vportNpM whose port name is agentPort.
func findAgentPort() (string, error) {
	names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err == nil && strings.TrimSpace(string(b)) == agentPort {
			return "/dev/" + filepath.Base(filepath.Dir(n)), nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port named %s", agentPort)
}

// serveAgent answers guest agent commands on the agent port until the
// guest stops. The port reads EOF while no host client is connected (or
// after one left); the loop then waits and reads again.
func serveAgent(r *reaper) {
	path, err := findAgentPort()
	if err != nil {
		logf("agent: %v; running no guest agent", err)
		return
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		logf("agent: %s: %v", path, err)
		return
	}
	logf("agent: serving on %s", path)
	a := &agent{w: f, reaper: r, execs: map[int]*execState{}}
	in := bufio.NewReader(&retryReader{f: f})
	for {
		dec := json.NewDecoder(&sentinelFilter{r: in})
		for {
			var req agentRequest
			if err := dec.Decode(&req); err != nil {
				// Garbage, or a client that reset the stream with 0xFF in
				// the middle of a command: start over with a fresh decoder.
				a.reply(nil, nil, &agentError{Class: "GenericError", Desc: "invalid JSON: " + err.Error()})
				break
			}
			a.handle(&req)
		}
	}
}

// retryReader turns the port's EOF (no host connected) and read errors
// into waiting, so the decoder only ever sees data: the agent must outlive
// any number of host clients coming and going.
type retryReader struct {
	f      *os.File
	logged bool
}

func (r *retryReader) Read(p []byte) (int, error) {
	for {
		n, err := r.f.Read(p)
		if n > 0 {
			return n, nil
		}
		if err != nil && !errors.Is(err, io.EOF) && !r.logged {
			r.logged = true
			logf("agent: read %s: %v (retrying)", r.f.Name(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sentinelFilter drops the 0xFF bytes a client sends before
// guest-sync-delimited to flush the agent's parser (never valid in JSON).
type sentinelFilter struct{ r io.Reader }

func (s *sentinelFilter) Read(p []byte) (int, error) {
	for {
		n, err := s.r.Read(p)
		out := p[:0]
		for _, b := range p[:n] {
			if b != 0xFF {
				out = append(out, b)
			}
		}
		if len(out) > 0 || err != nil {
			return len(out), err
		}
	}
}

type agentRequest struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id,omitempty"`
}

type agentError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

type agent struct {
	mu     sync.Mutex // serialises writes and guards execs
	w      io.Writer
	reaper *reaper
	execs  map[int]*execState
}

type execState struct {
	done     chan struct{}
	exitCode int
	signal   int
	signaled bool
	out, err bytes.Buffer
	outTrunc bool
	errTrunc bool
}

func (a *agent) reply(id json.RawMessage, ret any, e *agentError) {
	a.replyRaw(id, ret, e, false)
}

func (a *agent) replyRaw(id json.RawMessage, ret any, e *agentError, delimited bool) {
	msg := map[string]any{}
	if e != nil {
		msg["error"] = e
	} else {
		msg["return"] = ret
	}
	if len(id) > 0 {
		msg["id"] = id
	}
	b, _ := json.Marshal(msg)
	a.mu.Lock()
	defer a.mu.Unlock()
	if delimited {
		b = append([]byte{0xFF}, b...)
	}
	a.w.Write(append(b, '\n'))
}

func (a *agent) handle(req *agentRequest) {
	switch req.Execute {
	case "guest-sync", "guest-sync-delimited":
		var args struct {
			ID json.RawMessage `json:"id"`
		}
		if err := json.Unmarshal(req.Arguments, &args); err != nil || len(args.ID) == 0 {
			a.reply(req.ID, nil, &agentError{"GenericError", "guest-sync needs an integer id"})
			return
		}
		a.replyRaw(req.ID, args.ID, nil, req.Execute == "guest-sync-delimited")
	case "guest-ping":
		a.reply(req.ID, struct{}{}, nil)
	case "guest-info":
		type cmd struct {
			Name    string `json:"name"`
			Enabled bool   `json:"enabled"`
			Success bool   `json:"success-response"`
		}
		var cmds []cmd
		for _, c := range agentCommands {
			cmds = append(cmds, cmd{c, true, c != "guest-shutdown"})
		}
		a.reply(req.ID, map[string]any{"version": "evelet-guest-1", "supported_commands": cmds}, nil)
	case "guest-exec":
		a.exec(req)
	case "guest-exec-status":
		a.execStatus(req)
	case "guest-shutdown":
		var args struct {
			Mode string `json:"mode"`
		}
		if len(req.Arguments) > 0 {
			json.Unmarshal(req.Arguments, &args)
		}
		// Like qemu-ga, no reply on success: the guest goes away.
		switch args.Mode {
		case "", "powerdown":
			powerAction("guest-shutdown", unix.LINUX_REBOOT_CMD_POWER_OFF)
		case "halt":
			powerAction("guest-shutdown halt", unix.LINUX_REBOOT_CMD_HALT)
		case "reboot":
			powerAction("guest-shutdown reboot", unix.LINUX_REBOOT_CMD_RESTART)
		default:
			a.reply(req.ID, nil, &agentError{"GenericError", "guest-shutdown: unknown mode " + args.Mode})
		}
	default:
		a.reply(req.ID, nil, &agentError{"CommandNotFound", "The command " + req.Execute + " has not been found"})
	}
}

func (a *agent) exec(req *agentRequest) {
	var args struct {
		Path          string          `json:"path"`
		Arg           []string        `json:"arg"`
		Env           []string        `json:"env"`
		InputData     string          `json:"input-data"`
		CaptureOutput json.RawMessage `json:"capture-output"`
	}
	if err := json.Unmarshal(req.Arguments, &args); err != nil || args.Path == "" {
		a.reply(req.ID, nil, &agentError{"GenericError", "guest-exec needs a path"})
		return
	}
	input, err := base64.StdEncoding.DecodeString(args.InputData)
	if err != nil {
		a.reply(req.ID, nil, &agentError{"GenericError", "guest-exec: input-data is not base64: " + err.Error()})
		return
	}
	// capture-output is a bool, or (QEMU 8.1+) a mode string; any mode but
	// "none" captures separately here.
	capture := false
	switch s := strings.TrimSpace(string(args.CaptureOutput)); s {
	case "", "false", `"none"`:
	default:
		capture = true
	}
	st := &execState{done: make(chan struct{})}
	pid, err := a.startExec(args.Path, args.Arg, args.Env, input, capture, st)
	if err != nil {
		a.reply(req.ID, nil, &agentError{"GenericError", fmt.Sprintf("guest-exec %s: %v", args.Path, err)})
		return
	}
	a.mu.Lock()
	a.execs[pid] = st
	a.mu.Unlock()
	logf("agent: guest-exec %s pid %d", args.Path, pid)
	a.reply(req.ID, map[string]int{"pid": pid}, nil)
}

// startExec starts the command with its output going to pipes that are
// drained into st; st.done closes once the process was reaped and both
// pipes hit EOF.
func (a *agent) startExec(path string, argv, env []string, input []byte, capture bool, st *execState) (int, error) {
	cmd := exec.Command(path, argv...)
	cmd.Env = append([]string{"PATH=/sbin:/bin", "HOME=/"}, env...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true}
	var closeAfter []*os.File
	var readers []func()
	if len(input) > 0 {
		pr, pw, err := os.Pipe()
		if err != nil {
			return 0, err
		}
		cmd.Stdin = pr
		closeAfter = append(closeAfter, pr)
		go func() { pw.Write(input); pw.Close() }()
	}
	var wg sync.WaitGroup
	if capture {
		for i, buf := range []*bytes.Buffer{&st.out, &st.err} {
			pr, pw, err := os.Pipe()
			if err != nil {
				return 0, err
			}
			if i == 0 {
				cmd.Stdout = pw
			} else {
				cmd.Stderr = pw
			}
			closeAfter = append(closeAfter, pw)
			trunc := &st.outTrunc
			if i == 1 {
				trunc = &st.errTrunc
			}
			buf := buf
			readers = append(readers, func() {
				defer wg.Done()
				defer pr.Close()
				n, _ := io.Copy(buf, io.LimitReader(pr, maxCapture))
				if n == maxCapture {
					*trunc = true
					io.Copy(io.Discard, pr)
				}
			})
		}
	}
	pid, wait, err := a.reaper.start(func() (int, error) {
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	})
	for _, f := range closeAfter {
		f.Close()
	}
	if err != nil {
		return 0, err
	}
	wg.Add(len(readers))
	for _, r := range readers {
		go r()
	}
	go func() {
		ws := <-wait
		wg.Wait()
		if ws.Signaled() {
			st.signaled = true
			st.signal = int(ws.Signal())
		} else {
			st.exitCode = ws.ExitStatus()
		}
		close(st.done)
	}()
	return pid, nil
}

func (a *agent) execStatus(req *agentRequest) {
	var args struct {
		PID *int `json:"pid"`
	}
	if err := json.Unmarshal(req.Arguments, &args); err != nil || args.PID == nil {
		a.reply(req.ID, nil, &agentError{"GenericError", "guest-exec-status needs a pid"})
		return
	}
	a.mu.Lock()
	st, ok := a.execs[*args.PID]
	a.mu.Unlock()
	if !ok {
		a.reply(req.ID, nil, &agentError{"GenericError", fmt.Sprintf("Invalid parameter 'pid' %d", *args.PID)})
		return
	}
	select {
	case <-st.done:
	default:
		a.reply(req.ID, map[string]any{"exited": false}, nil)
		return
	}
	// Like qemu-ga, a status reported as exited is forgotten.
	a.mu.Lock()
	delete(a.execs, *args.PID)
	a.mu.Unlock()
	ret := map[string]any{"exited": true}
	if st.signaled {
		ret["signal"] = st.signal
	} else {
		ret["exitcode"] = st.exitCode
	}
	if st.out.Len() > 0 {
		ret["out-data"] = base64.StdEncoding.EncodeToString(st.out.Bytes())
	}
	if st.err.Len() > 0 {
		ret["err-data"] = base64.StdEncoding.EncodeToString(st.err.Bytes())
	}
	if st.outTrunc {
		ret["out-truncated"] = true
	}
	if st.errTrunc {
		ret["err-truncated"] = true
	}
	a.reply(req.ID, ret, nil)
}
