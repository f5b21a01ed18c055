package vmm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/lf-edge/evelet/cri/vm/vmnet"
)

// criLogMax is the longest log line written as one entry; longer ones are
// split into partial ("P") entries, as the kubelet's log reader expects.
const criLogMax = 16 << 10

// Run is the `evelet vmm <dir>` process: it runs QEMU for the
// container whose directory is dir and stays with it until it exits. It is
// started detached (its own session), so the shim and the agent may restart
// while the VM runs. It pumps the serial console into the container's log
// in the CRI format, serves console.sock for attach, and records QEMU's
// exit in exit.json, which is how the backend learns that the container
// exited.
func Run(dir string, log *logrus.Entry) error {
	var spec Spec
	if err := ReadJSON(filepath.Join(dir, SpecFile), &spec); err != nil {
		return err
	}
	s := &supervisor{dir: dir, spec: spec, log: log, qemuDone: make(chan struct{})}
	code, reason, msg := s.run()
	e := Exit{ExitCode: code, FinishedAt: time.Now().UnixNano(), Reason: reason, Message: msg}
	log.WithFields(logrus.Fields{"exitCode": code, "reason": reason}).Info("VM exited")
	return WriteJSON(filepath.Join(dir, ExitFile), &e)
}

type supervisor struct {
	dir  string
	spec Spec
	log  *logrus.Entry

	mu      sync.Mutex
	logFile *os.File
	clients map[net.Conn]bool
	stdin   io.WriteCloser
	// qemuDone is closed once QEMU has been reaped.
	qemuDone chan struct{}
	qemuPID  int
	// diskErr is the first disk write error QEMU reported (watch).
	diskErr *diskError
}

// run returns the exit code, reason and message for the container status.
func (s *supervisor) run() (int32, string, string) {
	pid := os.Getpid()
	// Failures before QEMU runs are "StartError": StartContainer reports
	// them to the kubelet.
	// The backend wrote it when it started us; written again (atomically: a
	// reader must never see it empty) for a supervisor started by hand.
	if err := WritePID(filepath.Join(s.dir, PIDFile), pid); err != nil {
		return 128, "StartError", err.Error()
	}
	for _, cg := range s.spec.Cgroups {
		if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return 128, "StartError", fmt.Sprintf("joining cgroup %s: %v", cg, err)
		}
	}
	if err := s.openLog(); err != nil {
		return 128, "StartError", err.Error()
	}
	ln, err := net.Listen("unix", filepath.Join(s.dir, ConsoleSocket))
	if err != nil {
		return 128, "StartError", fmt.Sprintf("console socket: %v", err)
	}
	defer ln.Close()
	s.clients = map[net.Conn]bool{}

	reopen := make(chan os.Signal, 1)
	signal.Notify(reopen, syscall.SIGUSR1)
	// The shim's session may be torn down; the VM must not go with it.
	// SIGXFSZ is ignored so that QEMU inherits it ignored: past its
	// RLIMIT_FSIZE a write fails with EFBIG (which QEMU reports, and
	// watch acts on) instead of killing QEMU with a core dump.
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE, syscall.SIGXFSZ)
	go func() {
		for range reopen {
			if err := s.openLog(); err != nil {
				s.log.WithError(err).Warn("reopening the container log")
			}
		}
	}()

	cmd, stdout, stderrBuf, err := s.startQEMU()
	if err != nil {
		return 128, "StartError", err.Error()
	}
	WritePID(filepath.Join(s.dir, QEMUPIDFile), cmd.Process.Pid)
	s.qemuPID = cmd.Process.Pid

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The guest takes its NICs' addresses by DHCP from here, for the VM's
	// lifetime (vmnet opens the sockets in the pod's netns).
	if s.spec.Net != nil && len(s.spec.Net.NICs) > 0 {
		go func() {
			if err := vmnet.ServeDHCPWithLog(ctx, s.spec.Net, s.log); err != nil && ctx.Err() == nil {
				s.log.WithError(err).Error("DHCP responder stopped")
			}
		}()
	}
	go s.acceptConsole(ln)
	pumped := make(chan struct{})
	go func() { s.pump(stdout); close(pumped) }()
	relErr := s.limitFileSize(cmd.Process.Pid)
	var mon *qmp.SocketMonitor
	if relErr == nil {
		mon, relErr = s.release(cmd.Process.Pid)
	}
	if relErr != nil {
		cmd.Process.Kill()
	} else {
		// The backend waits for this file: QEMU is up, has made its
		// sockets and runs the guest.
		os.WriteFile(filepath.Join(s.dir, StartedFile), nil, 0o600)
	}

	err = cmd.Wait()
	close(s.qemuDone)
	if mon != nil {
		mon.Disconnect()
	}
	<-pumped
	s.mu.Lock()
	if s.logFile != nil {
		s.logFile.Close()
	}
	s.mu.Unlock()
	if relErr != nil {
		return 128, "StartError", relErr.Error()
	}
	if reason, msg := s.diskStop(); reason != "" {
		return 137, reason, msg
	}
	if err == nil {
		return 0, "Completed", ""
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			if ws.Signal() == syscall.SIGKILL && s.oomKilled() {
				return int32(128 + ws.Signal()), "OOMKilled", "QEMU was killed by the kernel's OOM killer: the VM's or the pod's memory cgroup limit was reached (the guest's RAM plus QEMU's overhead must fit in the pod's limit; see the RuntimeClass overhead in docs/vm-pods.md)"
			}
			return int32(128 + ws.Signal()), "Error", fmt.Sprintf("QEMU killed by signal %s", unix.SignalName(ws.Signal()))
		}
		return int32(ee.ExitCode()), "Error", "QEMU: " + stderrBuf.tail()
	}
	return 128, "Error", err.Error()
}

// oomKilled says whether the memory cgroup of the VM, or the pod's above
// it, has killed a process for running out of memory.
func (s *supervisor) oomKilled() bool {
	for _, cg := range s.spec.Cgroups {
		for _, d := range []string{cg, filepath.Dir(cg)} {
			b, err := os.ReadFile(filepath.Join(d, "memory.oom_control"))
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(b), "\n") {
				if k, v, ok := strings.Cut(l, " "); ok && k == "oom_kill" && v != "0" {
					return true
				}
			}
		}
	}
	return false
}

// startQEMU starts QEMU inside the pod's netns. The thread that forks is
// locked into the netns and never unlocked, so it is thrown away after.
func (s *supervisor) startQEMU() (*exec.Cmd, io.Reader, *tailBuf, error) {
	type result struct {
		cmd    *exec.Cmd
		stdout io.Reader
		err    error
	}
	stderrBuf := &tailBuf{max: 4096}
	qlog, err := os.OpenFile(filepath.Join(s.dir, QEMULogFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, nil, err
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if s.spec.Netns != "" {
			ns, err := netns.GetFromPath(s.spec.Netns)
			if err != nil {
				res <- result{err: fmt.Errorf("pod netns: %w", err)}
				return
			}
			defer ns.Close()
			if err := netns.Set(ns); err != nil {
				res <- result{err: fmt.Errorf("entering pod netns: %w", err)}
				return
			}
		}
		cmd := exec.Command(s.spec.QEMU, s.spec.Args...)
		cmd.Dir = s.dir
		cmd.Stderr = io.MultiWriter(qlog, stderrBuf)
		// QEMU dies with its supervisor: without it, nobody would record its
		// exit, and a VM nobody watches is one nobody cleans up.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		stdin, err := cmd.StdinPipe()
		if err != nil {
			res <- result{err: err}
			return
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			res <- result{err: err}
			return
		}
		if err := cmd.Start(); err != nil {
			res <- result{err: fmt.Errorf("starting QEMU: %w", err)}
			return
		}
		s.mu.Lock()
		s.stdin = stdin
		s.mu.Unlock()
		res <- result{cmd: cmd, stdout: stdout}
		// Pdeathsig fires when the forking thread exits, not the process:
		// this thread must live as long as QEMU. It is locked and in the
		// netns, so it blocks here until QEMU is gone.
		<-s.qemuDone
	}()
	r := <-res
	return r.cmd, r.stdout, stderrBuf, r.err
}

func (s *supervisor) openLog() error {
	if s.spec.LogPath == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(s.spec.LogPath), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(s.spec.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("container log: %w", err)
	}
	s.mu.Lock()
	old := s.logFile
	s.logFile = f
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// pump copies the serial console to the log (CRI format) and to attached
// console clients.
func (s *supervisor) pump(r io.Reader) {
	br := bufio.NewReaderSize(r, criLogMax)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			s.broadcast(line)
			full := line[len(line)-1] == '\n'
			s.writeLog(line, full)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return
		}
	}
}

// writeLog writes one CRI log entry: "<time> stdout F|P <text>\n".
func (s *supervisor) writeLog(line []byte, full bool) {
	tag := "P"
	if full {
		tag = "F"
		line = line[:len(line)-1]
	}
	for len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	entry := make([]byte, 0, len(line)+48)
	entry = time.Now().AppendFormat(entry, time.RFC3339Nano)
	entry = append(entry, " stdout "...)
	entry = append(entry, tag...)
	entry = append(entry, ' ')
	entry = append(entry, line...)
	entry = append(entry, '\n')
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.logFile != nil {
		s.logFile.Write(entry)
	}
}

func (s *supervisor) broadcast(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.clients {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.Write(b); err != nil {
			c.Close()
			delete(s.clients, c)
		}
	}
}

// acceptConsole serves console.sock: output goes to every client, input
// from any client goes to the serial console.
func (s *supervisor) acceptConsole(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.clients[c] = true
		s.mu.Unlock()
		go func() {
			buf := make([]byte, 4096)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					s.mu.Lock()
					if s.stdin != nil {
						s.stdin.Write(buf[:n])
					}
					s.mu.Unlock()
				}
				if err != nil {
					s.mu.Lock()
					delete(s.clients, c)
					s.mu.Unlock()
					c.Close()
					return
				}
			}
		}()
	}
}
