package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	procfs "github.com/lf-edge/evelet/tests/internal/proc"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	stopGrace   = 10 * time.Second
	logTailSize = 256 << 10
	startMarker = "--- evelet controlplane: starting"
)

// proc is one running control-plane process.
type proc struct {
	name    string
	pidFile string
	cmd     *exec.Cmd
	exited  chan struct{} // closed once cmd has been waited for
	logPath string
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// exitStatus describes how the process ended ("running" if it has not).
func (p *proc) exitStatus() string {
	if p.running() {
		return "running"
	}
	return p.cmd.ProcessState.String()
}

// startProc starts bin in its own process group with stdout and stderr
// appended to <dir>/logs/<name>.log (and copied to log, if set), and records
// its pid in <dir>/pids/<name>.pid.
func startProc(dir, name, bin string, args, env []string, log io.Writer) (*proc, error) {
	logPath := filepath.Join(dir, "logs", name+".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o700); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	fmt.Fprintf(logFile, "%s %s %s at %s\n", startMarker, bin, strings.Join(args, " "),
		time.Now().Format(time.RFC3339Nano))

	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = env
	// Its own process group: a terminal's Ctrl-C reaches the test or the
	// demo, not the control plane, and Stop can signal the whole group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var prefixed *linePrefixer
	if log != nil {
		prefixed = &linePrefixer{prefix: name + ": ", out: log}
		w := io.MultiWriter(logFile, prefixed)
		cmd.Stdout, cmd.Stderr = w, w
		// Should a grandchild keep the pipe open, Wait must not hang on it.
		cmd.WaitDelay = 2 * time.Second
	} else {
		cmd.Stdout, cmd.Stderr = logFile, logFile
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("controlplane: starting %s: %w", bin, err)
	}
	p := &proc{
		name:    name,
		pidFile: filepath.Join(dir, "pids", name+".pid"),
		cmd:     cmd,
		exited:  make(chan struct{}),
		logPath: logPath,
	}
	go func() {
		_ = cmd.Wait()
		if prefixed != nil {
			prefixed.flush()
		}
		logFile.Close()
		close(p.exited)
	}()
	if err := writePIDFile(p.pidFile, p.pid()); err != nil {
		p.stop(0)
		return nil, err
	}
	return p, nil
}

func writePIDFile(path string, pid int) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	return nil
}

// removePIDFile removes a pid file if it still names pid (a later run
// on the same directory may have replaced it).
func removePIDFile(path string, pid int) {
	b, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(pid) {
		os.Remove(path)
	}
}

// stop sends SIGTERM to the process group, SIGKILL after grace, and
// waits until the process has been reaped. It is a no-op for a process
// that already exited.
func (p *proc) stop(grace time.Duration) error {
	defer removePIDFile(p.pidFile, p.pid())
	pgid := p.pid()
	if p.running() {
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(grace):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			select {
			case <-p.exited:
			case <-time.After(stopGrace):
				return fmt.Errorf("controlplane: %s (pid %d) survived SIGKILL", p.name, pgid)
			}
		}
	}
	// Whatever the leader left in its group goes too.
	return killGroup(pgid)
}

// killGroup SIGKILLs what is left of process group pgid and waits until
// it is gone.
func killGroup(pgid int) error {
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	ctx, cancel := context.WithTimeout(context.Background(), stopGrace)
	defer cancel()
	for {
		left := groupPIDs(pgid)
		if len(left) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("controlplane: processes %v of group %d survived SIGKILL", left, pgid)
		case <-time.After(20 * time.Millisecond):
		}
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
}

// groupPIDs lists the live (not zombie) processes of process group pgid.
func groupPIDs(pgid int) []int {
	var pids []int
	for _, pid := range procfs.PIDs() {
		st, ok := procfs.ReadStat(pid)
		if ok && st.PGRP == pgid && st.State != 'Z' && st.State != 'X' {
			pids = append(pids, pid)
		}
	}
	return pids
}

// logTail summarizes the process's log since its last start: the klog
// error lines (E/F prefix) and etcd error lines, then the last lines.
func (p *proc) logTail() string {
	return logTail(p.logPath)
}

func logTail(path string) string {
	lines, err := procfs.TailLines(path, startMarker, logTailSize, 500)
	if err != nil {
		return err.Error()
	}
	const lastN, maxErrors = 15, 15
	var b strings.Builder
	var errs []string
	for _, l := range lines[:max(0, len(lines)-lastN)] {
		if isErrorLine(l) {
			errs = append(errs, l)
		}
	}
	if len(errs) > maxErrors {
		errs = append([]string{"[...]"}, errs[len(errs)-maxErrors:]...)
	}
	for _, l := range errs {
		b.WriteString(l + "\n")
	}
	if len(lines) > lastN {
		b.WriteString("[...]\n")
	}
	for _, l := range lines[max(0, len(lines)-lastN):] {
		b.WriteString(l + "\n")
	}
	return b.String()
}

// isErrorLine recognizes klog error/fatal lines ("E0102 15:04:05...") and
// etcd's zap JSON error lines.
func isErrorLine(l string) bool {
	if len(l) > 5 && (l[0] == 'E' || l[0] == 'F') && l[1] >= '0' && l[1] <= '9' {
		return true
	}
	return strings.Contains(l, `"level":"error"`) || strings.Contains(l, `"level":"fatal"`) ||
		strings.Contains(l, `"level":"panic"`)
}

// linePrefixer copies whole lines to out, each prefixed with the process
// name. It never fails a write: an unusable log writer must not give the
// child process a broken pipe.
type linePrefixer struct {
	prefix string
	out    io.Writer

	mu  sync.Mutex
	buf []byte
}

// outMu serializes writes of all processes to the shared Options.Log, which
// need not be safe for concurrent use.
var outMu sync.Mutex

func (w *linePrefixer) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.emit(w.buf[:i+1])
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 64<<10 { // an endless line: pass it on in pieces
		w.emit(append(w.buf, '\n'))
		w.buf = nil
	}
	return len(b), nil
}

func (w *linePrefixer) emit(line []byte) {
	outMu.Lock()
	defer outMu.Unlock()
	_, _ = io.WriteString(w.out, w.prefix+string(line))
}

func (w *linePrefixer) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.emit(append(w.buf, '\n'))
		w.buf = nil
	}
}

// KillLeftovers kills the processes a crashed earlier run left behind in
// dir: every pid recorded in dir/pids/*.pid whose command line still refers
// to dir (so that a recycled pid is never hit) is killed with its process
// group. It waits until they are gone and removes the pid files. Prepare
// calls it for Options.Dir.
func KillLeftovers(dir string) error {
	dir, err := canonicalDir(dir)
	if err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(dir, "pids", "*.pid"))
	if err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	var victims []int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 1 || !pidRefersTo(pid, dir) {
			continue
		}
		if pgid, err := syscall.Getpgid(pid); err == nil && pgid == pid {
			// Our children lead their own group: take all of it.
			if err := killGroup(pid); err != nil {
				return fmt.Errorf("controlplane: leftovers in %s: %w", dir, err)
			}
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
		victims = append(victims, pid)
	}
	ctx, cancel := context.WithTimeout(context.Background(), stopGrace)
	defer cancel()
	if err := WaitPIDsGone(ctx, victims...); err != nil {
		return fmt.Errorf("controlplane: leftovers in %s: %w", dir, err)
	}
	for _, f := range files {
		os.Remove(f)
	}
	return nil
}

// pidRefersTo tells whether pid's command line mentions dir.
func pidRefersTo(pid int, dir string) bool {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	for _, a := range strings.Split(string(raw), "\x00") {
		if a == dir || strings.Contains(a, dir+"/") {
			return true
		}
	}
	return false
}

// PIDAlive is false for processes that are gone and for zombies (dead,
// waiting to be reaped).
func PIDAlive(pid int) bool {
	st, ok := procfs.ReadStat(pid)
	state := st.State
	return ok && state != 'Z' && state != 'X'
}

// WaitPIDsGone waits until none of pids is alive (see PIDAlive), or fails
// with the survivors when ctx ends.
func WaitPIDsGone(ctx context.Context, pids ...int) error {
	for {
		var alive []int
		for _, p := range pids {
			if PIDAlive(p) {
				alive = append(alive, p)
			}
		}
		if len(alive) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("processes %v still alive: %w", alive, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// canonicalDir makes dir absolute with symlinks resolved (when it exists),
// the form command lines carry.
func canonicalDir(dir string) (string, error) {
	if dir == "" {
		return "", errors.New("controlplane: Options.Dir is required")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("controlplane: %w", err)
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	return abs, nil
}
