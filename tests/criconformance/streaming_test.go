package criconformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	utilexec "k8s.io/client-go/util/exec"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The streaming RPCs answer with a URL on containerd's streaming server,
// which the kubelet proxies; these tests stream from that URL with the
// SPDY clients kubectl uses.

func executor(t *testing.T, rawURL string) remotecommand.Executor {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("streaming URL %q: %v", rawURL, err)
	}
	ex, err := remotecommand.NewSPDYExecutor(&rest.Config{}, http.MethodPost, u)
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

func TestExec(t *testing.T) {
	needEnv(t)
	_, id := startPod(t, "exec", "exec sleep 3600")
	waitContainer(t, id, runtimeapi.ContainerState_CONTAINER_RUNNING)

	run := func(req *runtimeapi.ExecRequest, stdin io.Reader) (string, string, error) {
		t.Helper()
		req.ContainerId = id
		resp, err := env.rs.Exec(ctx(t), req)
		if err != nil {
			t.Fatalf("Exec: %v", err)
		}
		var out, errOut bytes.Buffer
		opts := remotecommand.StreamOptions{Stdin: stdin, Stdout: &out, Tty: req.Tty}
		if !req.Tty {
			opts.Stderr = &errOut
		}
		err = executor(t, resp.GetUrl()).StreamWithContext(ctx(t), opts)
		return out.String(), errOut.String(), err
	}

	out, _, err := run(&runtimeapi.ExecRequest{Cmd: []string{"echo", "hi"}, Stdout: true, Stderr: true}, nil)
	if err != nil || out != "hi\n" {
		t.Errorf("exec echo hi: %q, %v", out, err)
	}
	out, errOut, err := run(&runtimeapi.ExecRequest{Cmd: []string{"sh", "-c", "cat; echo oops >&2; exit 3"}, Stdin: true, Stdout: true, Stderr: true},
		strings.NewReader("from stdin\n"))
	var exit utilexec.ExitError
	if out != "from stdin\n" || errOut != "oops\n" || !errors.As(err, &exit) || exit.ExitStatus() != 3 {
		t.Errorf("exec with stdin and exit 3: stdout %q stderr %q err %v", out, errOut, err)
	}
	out, _, err = run(&runtimeapi.ExecRequest{Cmd: []string{"sh", "-c", "test -t 1 && echo tty"}, Stdout: true, Tty: true}, nil)
	if err != nil || strings.TrimSpace(out) != "tty" {
		t.Errorf("exec with a tty: %q, %v", out, err)
	}
}

// lineWatcher is an io.Writer that closes found once want has been written.
type lineWatcher struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	want  string
	found chan struct{}
	once  sync.Once
}

func (w *lineWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.want) {
		w.once.Do(func() { close(w.found) })
	}
	return len(p), nil
}

func (w *lineWatcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestAttach(t *testing.T) {
	needEnv(t)
	r := startSandbox(t, "attach", "main")
	cfg := r.Container("main", "sh", "-c", `while read l; do echo "got:$l"; done`)
	cfg.Stdin = true
	id := r.create(t, cfg)
	if err := env.rs.StartContainer(ctx(t), id); err != nil {
		t.Fatal(err)
	}
	waitContainer(t, id, runtimeapi.ContainerState_CONTAINER_RUNNING)

	resp, err := env.rs.Attach(ctx(t), &runtimeapi.AttachRequest{ContainerId: id, Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	stdinR, stdinW := io.Pipe()
	out := &lineWatcher{want: "got:hello attach", found: make(chan struct{})}
	sctx, cancel := context.WithCancel(ctx(t))
	defer cancel()
	streamed := make(chan error, 1)
	go func() {
		streamed <- executor(t, resp.GetUrl()).StreamWithContext(sctx, remotecommand.StreamOptions{Stdin: stdinR, Stdout: out, Stderr: io.Discard})
	}()
	if _, err := io.WriteString(stdinW, "hello attach\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-out.found:
	case err := <-streamed:
		t.Fatalf("attach ended early (%v) with output %q", err, out.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("no echo through attach; output %q", out.String())
	}
	cancel()
	stdinW.Close()
	select {
	case <-streamed:
	case <-time.After(10 * time.Second):
		t.Error("attach stream did not end after cancel")
	}
}

func TestPortForward(t *testing.T) {
	needEnv(t)
	r, id := startPod(t, "portfwd", "mkdir -p /www && echo hello-portforward > /www/index.html && exec httpd -f -p 8080 -h /www")
	waitContainer(t, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
	waitFor(t, "httpd listening", 20*time.Second, func() (bool, string) {
		out, _, err := env.rs.ExecSync(ctx(t), id, []string{"wget", "-q", "-O-", "http://127.0.0.1:8080/"}, 5*time.Second)
		return err == nil, fmt.Sprintf("%q %v", out, err)
	})

	resp, err := env.rs.PortForward(ctx(t), &runtimeapi.PortForwardRequest{PodSandboxId: r.id, Port: []int32{8080}})
	if err != nil {
		t.Fatalf("PortForward: %v", err)
	}
	u, err := url.Parse(resp.GetUrl())
	if err != nil {
		t.Fatal(err)
	}
	transport, upgrader, err := spdy.RoundTripperFor(&rest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	stop, ready := make(chan struct{}), make(chan struct{})
	pf, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:8080"}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	forwarded := make(chan error, 1)
	go func() { forwarded <- pf.ForwardPorts() }()
	defer func() {
		close(stop)
		select {
		case <-forwarded:
		case <-time.After(10 * time.Second):
			t.Error("port forwarder did not stop")
		}
	}()
	select {
	case <-ready:
	case err := <-forwarded:
		t.Fatalf("port forwarding failed: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("port forwarding never ready")
	}
	ports, err := pf.GetPorts()
	if err != nil || len(ports) != 1 {
		t.Fatalf("forwarded ports %v, %v", ports, err)
	}
	client := &http.Client{Timeout: 20 * time.Second}
	for i := range 2 { // two connections over the same stream
		res, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/index.html", ports[0].Local))
		if err != nil {
			t.Fatalf("GET %d through the port forward: %v", i, err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || string(body) != "hello-portforward\n" {
			t.Errorf("GET %d through the port forward: %s %q", i, res.Status, body)
		}
	}
}
