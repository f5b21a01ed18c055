package vmnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/internal/syncbuf"

	"k8s.io/apimachinery/pkg/util/wait"
	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	clientexec "k8s.io/client-go/util/exec"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/kubelet/pkg/cri/streaming"

	"github.com/lf-edge/evelet/cri/vm/qga"
	"github.com/lf-edge/evelet/cri/vm/stream"
	"github.com/lf-edge/evelet/images/vmguest"
	"github.com/lf-edge/evelet/images/vmguest/vmguesttest"
)

// The proof for vmnet, qga and stream together: h3's test guest (kernel
// form) boots under QEMU (TCG here) on the tap vmnet made, takes the pod IP
// from ServeDHCP, answers HTTP from the host at the pod IP and the hostPort,
// runs commands through its guest agent (qga and, through the kubelet's
// streaming server, kubectl-style exec), and attach shows its console.

// testAccel: KVM only where the CPU can use it (see docs/vmguest.md).
func testAccel() string {
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		cpu, _ := os.ReadFile("/proc/cpuinfo")
		for _, l := range strings.Split(string(cpu), "\n") {
			if strings.HasPrefix(l, "flags") && (strings.Contains(l+" ", " vmx ") || strings.Contains(l+" ", " svm ")) {
				return "kvm"
			}
		}
	}
	return "tcg"
}

type guestVM struct {
	cmd                        *exec.Cmd
	dir, console, log, qgaSock string
	started                    time.Time
	exited                     chan struct{}
	stderr                     bytes.Buffer
}

// startGuest runs QEMU in the sandbox namespace with one virtio-net NIC per
// attachment NIC (tap and MAC from vmnet), the serial console on a socket
// (with a log file, so nothing is lost while no one is attached) and the
// guest agent's virtio-serial port on another socket.
func startGuest(t *testing.T, att *Attachment, img *vmguest.Images) *guestVM {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed (hack/install-prereqs.sh installs qemu-system-x86)")
	}
	dir := t.TempDir()
	v := &guestVM{dir: dir, console: filepath.Join(dir, "console.sock"), log: filepath.Join(dir, "console.log"),
		qgaSock: filepath.Join(dir, "qga.sock"), exited: make(chan struct{})}
	cmdline, err := os.ReadFile(img.Cmdline)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--net=" + att.Netns, "qemu-system-x86_64",
		"-machine", "q35", "-accel", testAccel(), "-m", "128M", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", img.Kernel, "-initrd", img.Initrd, "-append", strings.TrimSpace(string(cmdline)),
		"-chardev", "socket,id=con0,path=" + v.console + ",server=on,wait=off,logfile=" + v.log,
		"-serial", "chardev:con0",
		"-chardev", "socket,id=qga0,path=" + v.qgaSock + ",server=on,wait=off",
		"-device", "virtio-serial-pci", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
	}
	for i, nic := range att.NICs {
		args = append(args,
			"-netdev", fmt.Sprintf("tap,id=n%d,ifname=%s,script=no,downscript=no", i, nic.Tap),
			"-device", fmt.Sprintf("virtio-net-pci,netdev=n%d,mac=%s", i, nic.MAC))
	}
	v.cmd = exec.Command("nsenter", args...)
	v.cmd.Stderr = &v.stderr
	v.started = time.Now()
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { v.cmd.Wait(); close(v.exited) }()
	t.Cleanup(func() {
		v.cmd.Process.Kill()
		<-v.exited
		if t.Failed() {
			b, _ := os.ReadFile(v.log)
			t.Logf("serial console:\n%s\nqemu stderr:\n%s", b, v.stderr.String())
		}
	})
	return v
}

// waitConsole waits for a console line equal to want.
func (v *guestVM) waitConsole(t *testing.T, want string, timeout time.Duration) time.Duration {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		select {
		case <-v.exited:
			return false, errors.New("qemu exited")
		default:
		}
		b, _ := os.ReadFile(v.log)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.TrimRight(l, "\r") == want {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no %q on the console: %v", want, err)
	}
	return time.Since(v.started)
}

func TestQEMUGuestGetsPodIPAndAnswersExecAndAttach(t *testing.T) {
	e := newEnv(t, "10.245.7.0/24")
	img := vmguesttest.Images(t)
	id := "h5-vm-" + randHex(4)
	ctx := context.Background()
	t.Cleanup(func() { e.net.Teardown(ctx, id) })

	start := time.Now()
	att, err := e.net.Setup(ctx, id, PodMeta{Namespace: "default", Name: "vm-guest", UID: "uid-vm",
		PortMappings: []PortMapping{{HostPort: 18086, ContainerPort: 80, Protocol: "tcp"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("vmnet Setup: %v", time.Since(start))
	podIP := att.IPs[0]

	dctx, stopDHCP := context.WithCancel(ctx)
	dhcpDone := make(chan error, 1)
	go func() { dhcpDone <- ServeDHCP(dctx, att) }()
	defer func() { stopDHCP(); <-dhcpDone }()

	vm := startGuest(t, att, img)
	ready := vm.waitConsole(t, vmguest.ReadyLine, 3*time.Minute)
	t.Logf("QEMU start -> guest ready line (%s): %v", testAccel(), ready)

	// HTTP from the host to the pod IP answers from inside the guest, with
	// the host name DHCP offered and the address DHCP gave.
	want := "evelet-guest vm-guest " + podIP + "\n"
	waitHTTP(t, "http://"+podIP+"/", want)
	waitHTTP(t, "http://10.245.7.1:18086/", want) // hostPort (portmap DNAT)

	// The guest agent through qga.
	qctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	c, err := qga.Dial(qctx, vm.qgaSock)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(qctx); err != nil {
		t.Fatal(err)
	}
	res, err := c.Exec(qctx, qga.ExecRequest{Path: "/bin/sh", Args: []string{"-c", "echo hi; exit 3"}})
	if err != nil || res.ExitCode != 3 || string(res.Stdout) != "hi\n" {
		t.Errorf("guest exec: %+v, %v", res, err)
	}
	c.Close()

	// kubectl-style exec and attach through the kubelet's streaming server.
	rt := stream.New(func(cid string) (stream.Paths, error) {
		if cid != "vm" {
			return stream.Paths{}, fmt.Errorf("no container %s", cid)
		}
		return stream.Paths{QGASocket: vm.qgaSock, ConsoleSocket: vm.console}, nil
	}, e.net.log)
	srv := serveStreaming(t, rt)
	resp, err := srv.GetExec(&runtimeapi.ExecRequest{ContainerId: "vm", Cmd: []string{"sh", "-c", "ip -4 addr show; cat; exit 5"}, Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	err = spdy(t, resp.Url).StreamWithContext(qctx, remotecommand.StreamOptions{Stdin: strings.NewReader("stdin-through\n"), Stdout: &out, Stderr: &errb})
	var ce clientexec.CodeExitError
	if !errors.As(err, &ce) || ce.Code != 5 {
		t.Errorf("exec: %v, want exit code 5", err)
	}
	if !strings.Contains(out.String(), "inet "+podIP+"/24") || !strings.HasSuffix(out.String(), "stdin-through\n") {
		t.Errorf("exec output %q: want the pod IP on a guest NIC and stdin echoed", out.String())
	}

	aresp, err := srv.GetAttach(&runtimeapi.AttachRequest{ContainerId: "vm", Stdout: true})
	if err != nil {
		t.Fatal(err)
	}
	attOut := &syncbuf.Buffer{}
	actx, stopAttach := context.WithCancel(qctx)
	attDone := make(chan error, 1)
	go func() {
		attDone <- spdy(t, aresp.Url).StreamWithContext(actx, remotecommand.StreamOptions{Stdout: attOut})
	}()
	// Something the guest writes to its serial console reaches the
	// attached client. Repeat until attach has connected.
	err = wait.PollUntilContextTimeout(qctx, 500*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		r, err := rt.ExecSync(ctx, "vm", []string{"sh", "-c", "echo attach-marker > /dev/ttyS0"}, 30*time.Second)
		if err != nil || r.ExitCode != 0 {
			return false, fmt.Errorf("exec: %+v, %v", r, err)
		}
		return strings.Contains(attOut.String(), "attach-marker"), nil
	})
	if err != nil {
		t.Errorf("attach never showed the console line: %v (got %q)", err, attOut.String())
	}
	stopAttach()
	<-attDone

	// The guest powers off (guest-shutdown); then Teardown leaves nothing.
	c, err = qga.Dial(qctx, vm.qgaSock)
	if err != nil {
		t.Fatal(err)
	}
	c.Shutdown(qctx)
	c.Close()
	select {
	case <-vm.exited:
	case <-time.After(time.Minute):
		t.Error("guest did not power off on guest-shutdown")
	}
	stopDHCP()
	if err := <-dhcpDone; err != nil {
		t.Errorf("ServeDHCP: %v", err)
	}
	dhcpDone <- nil // for the deferred receive
	start = time.Now()
	if err := e.net.Teardown(ctx, id); err != nil {
		t.Fatal(err)
	}
	t.Logf("vmnet Teardown: %v", time.Since(start))
	e.assertClean(id)
}

func serveStreaming(t *testing.T, rt *stream.Runtime) streaming.Server {
	t.Helper()
	srv, hs, err := stream.Serve("127.0.0.1:0", rt, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hs.Close() })
	return srv
}

func spdy(t *testing.T, raw string) remotecommand.Executor {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	ex, err := remotecommand.NewSPDYExecutor(&restclient.Config{}, http.MethodPost, u)
	if err != nil {
		t.Fatal(err)
	}
	return ex
}
