package stream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/internal/syncbuf"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/wait"
	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	clientexec "k8s.io/client-go/util/exec"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/kubelet/pkg/cri/streaming"
)

// startAgent runs a real QEMU guest agent (Debian's qemu-guest-agent) on a
// unix socket. It runs on this host rather than in a guest, which is all the
// protocol side needs; the in-guest run is in the QEMU tests.
func startAgent(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("qemu-ga")
	if err != nil {
		t.Skip("qemu-ga is not installed (hack/install-prereqs.sh installs qemu-guest-agent)")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "qga.sock")
	cmd := exec.Command(bin, "-m", "unix-listen", "-p", sock, "-t", dir, "-f", filepath.Join(dir, "pid"), "-l", filepath.Join(dir, "log"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	err = wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		_, err := os.Stat(sock)
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("qemu-ga made no socket: %v", err)
	}
	return sock
}

// unixServer listens on a socket in a test directory and runs handle for
// each connection until the test ends.
func unixServer(t *testing.T, name string, handle func(net.Conn)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), name)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return sock
}

// silentSocket accepts connections and never answers: a VM without agent.
func silentSocket(t *testing.T) string {
	return unixServer(t, "qga.sock", func(c net.Conn) { io.Copy(io.Discard, c) })
}

// echoConsole stands in for the supervisor's console socket: it greets and
// echoes each line back, prefixed.
func echoConsole(t *testing.T) string {
	return unixServer(t, "console.sock", func(c net.Conn) {
		defer c.Close()
		fmt.Fprintf(c, "console: hello\n")
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			if sc.Text() == "bye" {
				return // the VM "stops": the console closes
			}
			fmt.Fprintf(c, "echo: %s\n", sc.Text())
		}
	})
}

// serve runs the kubelet's CRI streaming server with our Runtime.
func serve(t *testing.T, rt *Runtime) streaming.Server {
	t.Helper()
	srv, hs, err := Serve("127.0.0.1:0", rt, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hs.Close() })
	return srv
}

type executorKind string

const spdyExec executorKind = "spdy"

func executor(t *testing.T, kind executorKind, rawURL string) remotecommand.Executor {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	ex, err := remotecommand.NewSPDYExecutor(&restclient.Config{}, http.MethodPost, u)
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

func locator(p Paths) Locator {
	return func(id string) (Paths, error) {
		if id != "vm1" {
			return Paths{}, fmt.Errorf("container %s: not found", id)
		}
		return p, nil
	}
}

func TestExecThroughStreamingServer(t *testing.T) {
	rt := New(locator(Paths{QGASocket: startAgent(t)}), nil)
	srv := serve(t, rt)
	// SPDY is what reaches a CRI streaming server: the API server turns
	// kubectl's websocket (v5.channel.k8s.io) into SPDY towards the kubelet,
	// and the kubelet proxies that to the runtime's URL.
	for _, kind := range []executorKind{spdyExec} {
		t.Run(string(kind), func(t *testing.T) {
			resp, err := srv.GetExec(&runtimeapi.ExecRequest{ContainerId: "vm1",
				Cmd:   []string{"sh", "-c", "cat; echo out; echo err >&2; exit 7"},
				Stdin: true, Stdout: true, Stderr: true})
			if err != nil {
				t.Fatal(err)
			}
			var out, errb bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			err = executor(t, kind, resp.Url).StreamWithContext(ctx, remotecommand.StreamOptions{
				Stdin: strings.NewReader("data from stdin\n"), Stdout: &out, Stderr: &errb})
			var ce clientexec.CodeExitError
			if !errors.As(err, &ce) || ce.Code != 7 {
				t.Errorf("exec error %v (%T), want exit code 7", err, err)
			}
			if out.String() != "data from stdin\nout\n" || errb.String() != "err\n" {
				t.Errorf("stdout %q stderr %q", out.String(), errb.String())
			}

			// Exit code 0 is success.
			resp, _ = srv.GetExec(&runtimeapi.ExecRequest{ContainerId: "vm1", Cmd: []string{"echo", "ok"}, Stdout: true})
			out.Reset()
			if err := executor(t, kind, resp.Url).StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out}); err != nil || out.String() != "ok\n" {
				t.Errorf("echo ok: %q, %v", out.String(), err)
			}
		})
	}
}

func TestExecRefusals(t *testing.T) {
	srv := serve(t, New(locator(Paths{QGASocket: startAgent(t)}), nil))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// -t: clear error, nothing runs.
	resp, err := srv.GetExec(&runtimeapi.ExecRequest{ContainerId: "vm1", Cmd: []string{"sh"}, Stdin: true, Stdout: true, Tty: true})
	if err != nil {
		t.Fatal(err)
	}
	err = executor(t, spdyExec, resp.Url).StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: strings.NewReader(""), Stdout: io.Discard, Tty: true})
	if err == nil || !strings.Contains(err.Error(), "no terminal") {
		t.Errorf("exec -t: %v, want the no-terminal error", err)
	}

	// A missing binary: the agent's error reaches the client.
	resp, _ = srv.GetExec(&runtimeapi.ExecRequest{ContainerId: "vm1", Cmd: []string{"/no/such/binary"}, Stdout: true})
	err = executor(t, spdyExec, resp.Url).StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: io.Discard})
	if err == nil || !strings.Contains(err.Error(), "/no/such/binary") {
		t.Errorf("exec of a missing binary: %v", err)
	}

	// Unknown container: the locator's error.
	resp, _ = srv.GetExec(&runtimeapi.ExecRequest{ContainerId: "other", Cmd: []string{"true"}, Stdout: true})
	err = executor(t, spdyExec, resp.Url).StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: io.Discard})
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("exec into an unknown container: %v", err)
	}
}

func TestExecWithoutAgent(t *testing.T) {
	rt := New(locator(Paths{QGASocket: silentSocket(t)}), nil)
	rt.SyncTimeout = 500 * time.Millisecond
	srv := serve(t, rt)
	resp, err := srv.GetExec(&runtimeapi.ExecRequest{ContainerId: "vm1", Cmd: []string{"true"}, Stdout: true})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = executor(t, spdyExec, resp.Url).StreamWithContext(context.Background(), remotecommand.StreamOptions{Stdout: io.Discard})
	if err == nil || !strings.Contains(err.Error(), "runs no QEMU guest agent") {
		t.Errorf("exec without agent: %v, want the no-agent error", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("no-agent error after %v", d)
	}
	_, err = rt.ExecSync(context.Background(), "vm1", []string{"true"}, 0)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "runs no QEMU guest agent") {
		t.Errorf("ExecSync without agent: %v", err)
	}
}

func TestExecSync(t *testing.T) {
	rt := New(locator(Paths{QGASocket: startAgent(t)}), nil)
	ctx := context.Background()
	r, err := rt.ExecSync(ctx, "vm1", []string{"sh", "-c", "echo o; echo e >&2; exit 2"}, 30*time.Second)
	if err != nil || r.ExitCode != 2 || string(r.Stdout) != "o\n" || string(r.Stderr) != "e\n" {
		t.Fatalf("ExecSync = %+v, %v", r, err)
	}
	start := time.Now()
	_, err = rt.ExecSync(ctx, "vm1", []string{"sleep", "30"}, 500*time.Millisecond)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("ExecSync past its timeout: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("timeout reported after %v", d)
	}
	// The channel is usable again after a timed-out command.
	if r, err := rt.ExecSync(ctx, "vm1", []string{"echo", "again"}, 30*time.Second); err != nil || string(r.Stdout) != "again\n" {
		t.Errorf("ExecSync after a timeout: %+v, %v", r, err)
	}
}

func TestAttachIsTheConsole(t *testing.T) {
	srv := serve(t, New(locator(Paths{ConsoleSocket: echoConsole(t)}), nil))
	for _, kind := range []executorKind{spdyExec} {
		t.Run(string(kind), func(t *testing.T) {
			resp, err := srv.GetAttach(&runtimeapi.AttachRequest{ContainerId: "vm1", Stdin: true, Stdout: true, Tty: true})
			if err != nil {
				t.Fatal(err)
			}
			pr, pw := io.Pipe()
			t.Cleanup(func() { pw.Close() })
			out := &syncbuf.Buffer{}
			done := make(chan error, 1)
			go func() {
				done <- executor(t, kind, resp.Url).StreamWithContext(context.Background(), remotecommand.StreamOptions{Stdin: pr, Stdout: out, Tty: true})
			}()
			io.WriteString(pw, "ping\n")
			err = wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
				return strings.Contains(out.String(), "console: hello") && strings.Contains(out.String(), "echo: ping"), nil
			})
			if err != nil {
				t.Fatalf("console output %q", out.String())
			}
			// The VM stops: the console closes and attach ends.
			io.WriteString(pw, "bye\n")
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("attach ended with %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("attach did not end when the console closed")
			}
			pw.Close()
		})
	}
}

func TestPortForwardRefused(t *testing.T) {
	rt := New(locator(Paths{}), nil)
	if err := rt.PortForward(context.Background(), "sb", 80, nil); !errors.Is(err, ErrPortForward) {
		t.Errorf("PortForward: %v", err)
	}
}
