// Package stream serves kubectl exec, attach and port-forward for VM
// containers through the kubelet's CRI streaming server
// (k8s.io/kubelet/pkg/cri/streaming): exec runs the command through the
// QEMU guest agent (cri/vm/qga), attach is the VM's serial console, and
// port-forward is refused (the pod IP is the guest's: use it or a Service).
package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/sirupsen/logrus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/tools/remotecommand"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/kubelet/pkg/cri/streaming"
	utilexec "k8s.io/utils/exec"

	"github.com/lf-edge/evelet/cri/vm/qga"
)

// Paths are a VM container's sockets: the guest agent's channel and the
// serial console the per-VM supervisor serves.
type Paths struct {
	QGASocket, ConsoleSocket string
}

// Locator finds a container's sockets; an error for unknown containers.
type Locator func(containerID string) (Paths, error)

// MaxStdin caps what exec reads from stdin: the guest agent takes stdin as
// one base64 string inside a JSON command, not as a stream.
const MaxStdin = 8 << 20

// Errors the user sees in kubectl; they say what to do instead.
var (
	ErrTTY         = errors.New("exec into a VM pod has no terminal (tty): the QEMU guest agent runs commands without one; run kubectl exec without -t, or use kubectl attach -it for the serial console")
	ErrPortForward = errors.New("port-forward to a VM pod is not supported: the pod IP is the guest's own, reach the guest at the pod IP or through a Service")
)

// Runtime implements streaming.Runtime for VM containers.
type Runtime struct {
	locate Locator
	log    *logrus.Entry
	// SyncTimeout is how long exec waits for the guest agent to answer
	// before reporting that the guest runs none.
	SyncTimeout time.Duration
}

var _ streaming.Runtime = (*Runtime)(nil)

// New returns a Runtime finding containers with locate.
func New(locate Locator, log *logrus.Entry) *Runtime {
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	return &Runtime{locate: locate, log: log.WithField("component", "vm-stream"), SyncTimeout: qga.DefaultSyncTimeout}
}

// Serve starts a CRI streaming server for rt on a listener it opens at
// addr (e.g. "127.0.0.1:0"), so the URLs GetExec/GetAttach hand out carry
// the real port and work from the first one. Close the http.Server to stop.
func Serve(addr string, rt *Runtime, log *logrus.Entry) (streaming.Server, *http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("streaming server: %w", err)
	}
	cfg := streaming.DefaultConfig
	cfg.Addr = ln.Addr().String()
	cfg.BaseURL = &url.URL{Scheme: "http", Host: ln.Addr().String()}
	srv, err := streaming.NewServer(cfg, rt)
	if err != nil {
		ln.Close()
		return nil, nil, err
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && log != nil {
			log.WithError(err).Error("VM streaming server stopped")
		}
	}()
	return srv, hs, nil
}

// run starts cmd in the guest through the agent and waits for its result.
func (r *Runtime) run(ctx context.Context, containerID string, cmd []string, stdin []byte) (qga.ExecResult, error) {
	if len(cmd) == 0 || cmd[0] == "" {
		return qga.ExecResult{}, errors.New("exec into a VM pod: no command given")
	}
	p, err := r.locate(containerID)
	if err != nil {
		return qga.ExecResult{}, err
	}
	c, err := qga.DialTimeout(ctx, p.QGASocket, r.SyncTimeout)
	if errors.Is(err, qga.ErrNoAgent) {
		return qga.ExecResult{}, fmt.Errorf("container %s: %w; kubectl exec needs one (qemu-guest-agent on the virtio-serial port org.qemu.guest_agent.0); kubectl attach still reaches the serial console", containerID, err)
	}
	if err != nil {
		return qga.ExecResult{}, fmt.Errorf("container %s: guest agent: %w", containerID, err)
	}
	defer c.Close()
	res, err := c.Exec(ctx, qga.ExecRequest{Path: cmd[0], Args: cmd[1:], Stdin: stdin})
	if err != nil {
		return res, fmt.Errorf("container %s: %w", containerID, err)
	}
	r.log.WithFields(logrus.Fields{"container": containerID, "cmd": cmd[0], "exit": res.ExitCode}).Debug("guest exec")
	return res, nil
}

// Exec runs cmd in the guest. Stdin is read to its end first (the agent takes
// it whole), then the command runs and its output is written out once it has
// exited. A non-zero exit reaches kubectl as the command's exit code.
func (r *Runtime) Exec(ctx context.Context, containerID string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	if tty {
		return ErrTTY
	}
	var stdin []byte
	if in != nil {
		b, err := io.ReadAll(io.LimitReader(in, MaxStdin+1))
		if err != nil {
			return fmt.Errorf("exec into a VM pod: read stdin: %w", err)
		}
		if len(b) > MaxStdin {
			return fmt.Errorf("exec into a VM pod: stdin is over %d bytes; the guest agent takes stdin whole", MaxStdin)
		}
		stdin = b
	}
	res, err := r.run(ctx, containerID, cmd, stdin)
	if err != nil {
		return err
	}
	if out != nil && len(res.Stdout) > 0 {
		if _, err := out.Write(res.Stdout); err != nil {
			return err
		}
	}
	if errw != nil && len(res.Stderr) > 0 {
		if _, err := errw.Write(res.Stderr); err != nil {
			return err
		}
	}
	if res.ExitCode != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", res.ExitCode), Code: res.ExitCode}
	}
	return nil
}

// ExecSync is the CRI ExecSync RPC for a VM container (probes, kubectl
// exec without streams). timeout 0 means none; running past it answers
// DeadlineExceeded, which the kubelet reports as a probe timeout.
func (r *Runtime) ExecSync(ctx context.Context, containerID string, cmd []string, timeout time.Duration) (*runtimeapi.ExecSyncResponse, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	res, err := r.run(ctx, containerID, cmd, nil)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && timeout > 0 {
			return nil, status.Errorf(codes.DeadlineExceeded, "command %v timed out after %v: %v", cmd, timeout, err)
		}
		if errors.Is(err, qga.ErrNoAgent) {
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
		return nil, err
	}
	return &runtimeapi.ExecSyncResponse{Stdout: res.Stdout, Stderr: res.Stderr, ExitCode: int32(res.ExitCode)}, nil
}

// Attach connects to the VM's serial console: guest output goes to out,
// stdin (if any) to the guest. It returns when the client goes away or the
// console closes (the VM stopped). A tty is allowed (the console is one);
// resizes have nowhere to go and are dropped.
func (r *Runtime) Attach(ctx context.Context, containerID string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	p, err := r.locate(containerID)
	if err != nil {
		return err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", p.ConsoleSocket)
	if err != nil {
		return fmt.Errorf("container %s: serial console: %w", containerID, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-resize:
				if !ok {
					return
				}
			}
		}
	}()
	if in != nil {
		// The end of stdin is not the end of the session: the console keeps
		// talking until the client detaches. This copy ends when the
		// streaming server closes stdin after we return.
		go io.Copy(conn, in)
	}
	outDone := make(chan error, 1)
	cw := &clientWriter{w: io.Discard}
	if out != nil {
		cw.w = out
	}
	go func() {
		_, err := io.Copy(cw, conn)
		outDone <- err
	}()
	select {
	case <-ctx.Done():
		conn.Close()
		return nil
	case err := <-outDone:
		conn.Close()
		if cw.err != nil {
			// The client went away: a detach, not a failure.
			r.log.WithField("container", containerID).WithError(cw.err).Debug("attach client gone")
			return nil
		}
		if err != nil && !errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("container %s: serial console: %w", containerID, err)
		}
		return nil
	}
}

// clientWriter remembers a failed write to the client, so that a client
// going away is told apart from the console failing.
type clientWriter struct {
	w   io.Writer
	err error
}

func (c *clientWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if err != nil {
		c.err = err
	}
	return n, err
}

// PortForward is refused for VM pods; see ErrPortForward.
func (r *Runtime) PortForward(ctx context.Context, podSandboxID string, port int32, stream io.ReadWriteCloser) error {
	return ErrPortForward
}
