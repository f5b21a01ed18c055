package vmguest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lf-edge/evelet/internal/syncbuf"

	"github.com/vishvananda/netns"
	"k8s.io/apimachinery/pkg/util/wait"
)

// requireQEMU skips when this machine cannot boot the guest at all.
func requireQEMU(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed (hack/install-prereqs.sh installs qemu-system-x86)")
	}
	if os.Geteuid() != 0 {
		t.Skip("booting the guest on a test network needs root (network namespaces, taps)")
	}
	for _, tool := range []string{"ip", "dnsmasq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (hack/install-prereqs.sh installs it): %v", tool, err)
		}
	}
}

// testNet is a throwaway network namespace holding a bridge with the DHCP
// server (dnsmasq) on it and one tap per guest NIC.
type testNet struct {
	ns     string
	taps   []string
	leases string
}

const (
	testBridge = "h3br0"
	testGWCIDR = "10.77.0.1/24"
	testGW     = "10.77.0.1"
)

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

func newTestNet(t *testing.T, nics int) *testNet {
	t.Helper()
	suffix := make([]byte, 3)
	rand.Read(suffix)
	n := &testNet{ns: "h3-vmguest-" + hex.EncodeToString(suffix), leases: filepath.Join(t.TempDir(), "leases")}
	run(t, "ip", "netns", "add", n.ns)
	t.Cleanup(func() {
		// Deleting the namespace deletes the bridge and taps in it.
		if out, err := exec.Command("ip", "netns", "del", n.ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.ns, err, out)
		}
	})
	in := func(args ...string) { run(t, "ip", append([]string{"-n", n.ns}, args...)...) }
	in("link", "set", "lo", "up")
	in("link", "add", testBridge, "type", "bridge")
	in("addr", "add", testGWCIDR, "dev", testBridge)
	in("link", "set", testBridge, "up")
	for i := 0; i < nics; i++ {
		tap := fmt.Sprintf("h3tap%d", i)
		in("tuntap", "add", "dev", tap, "mode", "tap")
		in("link", "set", tap, "master", testBridge)
		in("link", "set", tap, "up")
		n.taps = append(n.taps, tap)
	}
	cmd := exec.Command("ip", "netns", "exec", n.ns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
		"--port=0", "--no-resolv", "--no-hosts", "--bind-interfaces", "--interface="+testBridge,
		"--dhcp-range=10.77.0.100,10.77.0.199,255.255.255.0,12h", "--dhcp-option=option:router,"+testGW,
		"--dhcp-leasefile="+n.leases, "--pid-file=", "--log-dhcp", "--log-facility=-",
		// No ping of an address before offering it: that costs seconds and
		// nothing else is on this bridge.
		"--no-ping")
	var logBuf syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	if err := cmd.Start(); err != nil {
		t.Fatalf("dnsmasq: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("dnsmasq log:\n%s", logBuf.String())
		}
	})
	return n
}

// leaseFor returns the address dnsmasq leased to mac, if any.
func (n *testNet) leaseFor(mac string) string {
	b, _ := os.ReadFile(n.leases)
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && strings.EqualFold(f[1], mac) {
			return f[2]
		}
	}
	return ""
}

// dial opens a TCP connection from inside the namespace: the socket is
// made on an OS thread switched into it, and stays there.
func (n *testNet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread is left locked: it ends with the goroutine instead of
		// going back to the pool in another namespace.
		runtime.LockOSThread()
		h, err := netns.GetFromName(n.ns)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			ch <- result{err: err}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// testVM is a running QEMU with its serial console on stdout.
type testVM struct {
	cmd     *exec.Cmd
	started time.Time
	qmp     string
	qga     string
	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced on every new line
	exited  chan struct{}
	waitErr error
}

// testAccel picks KVM only where it can work: /dev/kvm alone is not
// enough (this project's CI machines have the device node without
// hardware virtualisation; QEMU then starts and the guest never runs), the
// CPU must also offer vmx or svm. $EVELET_VMGUEST_ACCEL overrides (it is
// the value of QEMU's -accel, e.g. "tcg,tb-size=64").
func testAccel() string {
	if a := os.Getenv("EVELET_VMGUEST_ACCEL"); a != "" {
		return a
	}
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

// guestMAC is the MAC of NIC i.
func guestMAC(i int) string { return fmt.Sprintf("52:54:00:68:33:%02x", i+1) }

func startVM(t *testing.T, n *testNet, bootArgs ...string) *testVM {
	t.Helper()
	dir := t.TempDir()
	v := &testVM{qmp: filepath.Join(dir, "qmp.sock"), qga: filepath.Join(dir, "qga.sock"), changed: make(chan struct{}), exited: make(chan struct{})}
	accel := testAccel()
	t.Logf("the guest runs with -accel %s (tcg: QEMU software emulation, no usable /dev/kvm here)", accel)
	args := []string{"netns", "exec", n.ns, "qemu-system-x86_64",
		"-machine", "q35", "-accel", accel, "-m", "128M", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", "stdio,id=con0,signal=off", "-serial", "chardev:con0",
		"-qmp", "unix:" + v.qmp + ",server=on,wait=off",
		"-chardev", "socket,id=qga0,path=" + v.qga + ",server=on,wait=off",
		"-device", "virtio-serial-pci", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
	}
	for i, tap := range n.taps {
		args = append(args, "-netdev", fmt.Sprintf("tap,id=n%d,ifname=%s,script=no,downscript=no", i, tap),
			"-device", fmt.Sprintf("virtio-net-pci,netdev=n%d,mac=%s", i, guestMAC(i)))
	}
	args = append(args, bootArgs...)
	v.cmd = exec.Command("ip", args...)
	stdout, err := v.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncbuf.Buffer
	v.cmd.Stderr = &stderr
	v.started = time.Now()
	if err := v.cmd.Start(); err != nil {
		t.Fatalf("qemu: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			v.mu.Lock()
			v.lines = append(v.lines, strings.TrimRight(sc.Text(), "\r"))
			close(v.changed)
			v.changed = make(chan struct{})
			v.mu.Unlock()
		}
		v.waitErr = v.cmd.Wait()
		close(v.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-v.exited:
		default:
			v.cmd.Process.Kill()
			<-v.exited
		}
		if t.Failed() {
			t.Logf("serial console:\n%s\nqemu stderr:\n%s", v.console(), stderr.String())
		}
	})
	return v
}

func (v *testVM) console() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return strings.Join(v.lines, "\n")
}

// waitLine waits for a console line equal to want and returns the time
// since QEMU started when it appeared.
func (v *testVM) waitLine(ctx context.Context, want string) (time.Duration, error) {
	seen := 0
	for {
		v.mu.Lock()
		for ; seen < len(v.lines); seen++ {
			if v.lines[seen] == want {
				v.mu.Unlock()
				return time.Since(v.started), nil
			}
		}
		changed := v.changed
		v.mu.Unlock()
		select {
		case <-changed:
		case <-v.exited:
			return 0, fmt.Errorf("qemu exited (%v) before printing %q", v.waitErr, want)
		case <-ctx.Done():
			return 0, fmt.Errorf("no %q on the console: %w", want, ctx.Err())
		}
	}
}

// rssKiB reads QEMU's resident set size. `ip netns exec` execs QEMU in
// its own process, so the pid is QEMU's.
func (v *testVM) rssKiB() (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", v.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		}
	}
	return 0, errors.New("no VmRSS")
}

// qmpCommand connects to QMP, negotiates capabilities and runs one
// command.
func qmpCommand(ctx context.Context, sock, command string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	dec := json.NewDecoder(c)
	var greeting map[string]json.RawMessage
	if err := dec.Decode(&greeting); err != nil {
		return fmt.Errorf("qmp greeting: %w", err)
	}
	if _, ok := greeting["QMP"]; !ok {
		return fmt.Errorf("qmp: unexpected greeting %v", greeting)
	}
	for _, cmd := range []string{"qmp_capabilities", command} {
		if _, err := fmt.Fprintf(c, `{"execute":%q}`+"\n", cmd); err != nil {
			return err
		}
		for {
			var resp map[string]json.RawMessage
			if err := dec.Decode(&resp); err != nil {
				return fmt.Errorf("qmp %s: %w", cmd, err)
			}
			if e, ok := resp["error"]; ok {
				return fmt.Errorf("qmp %s: %s", cmd, e)
			}
			if _, ok := resp["return"]; ok {
				break
			}
			// an event: keep reading
		}
	}
	return nil
}

// qgaClient is a minimal test-only guest agent client.
type qgaClient struct {
	c   net.Conn
	r   *bufio.Reader
	seq int
}

func dialQGA(ctx context.Context, sock string) (*qgaClient, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, err
	}
	q := &qgaClient{c: c, r: bufio.NewReader(c)}
	return q, nil
}

func (q *qgaClient) Close() error { return q.c.Close() }

// sync runs guest-sync-delimited: it sends 0xFF to reset the agent's
// parser, then skips everything up to the 0xFF that precedes the reply.
// Until the agent is up the command goes unanswered, so callers retry
// with short per-attempt deadlines.
func (q *qgaClient) sync(ctx context.Context) error {
	q.seq++
	id := 1000 + q.seq
	if dl, ok := ctx.Deadline(); ok {
		q.c.SetDeadline(dl)
	}
	if _, err := fmt.Fprintf(q.c, "\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", id); err != nil {
		return err
	}
	for {
		b, err := q.r.ReadByte()
		if err != nil {
			return err
		}
		if b != 0xFF {
			continue
		}
		var resp struct {
			Return int `json:"return"`
		}
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return err
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return fmt.Errorf("guest-sync-delimited reply %q: %w", line, err)
		}
		if resp.Return == id {
			return nil
		}
		// a reply to an older attempt: keep reading
	}
}

// call runs one command and decodes its return value into ret.
func (q *qgaClient) call(ctx context.Context, execute string, args any, ret any) error {
	if dl, ok := ctx.Deadline(); ok {
		q.c.SetDeadline(dl)
	}
	req := map[string]any{"execute": execute}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.c.Write(append(b, '\n')); err != nil {
		return err
	}
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		return err
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(line, &resp); err != nil {
		return fmt.Errorf("%s reply %q: %w", execute, line, err)
	}
	if resp.Error != nil {
		return fmt.Errorf("%s: %s: %s", execute, resp.Error.Class, resp.Error.Desc)
	}
	if ret != nil {
		return json.Unmarshal(resp.Return, ret)
	}
	return nil
}

type execStatus struct {
	Exited   bool   `json:"exited"`
	ExitCode *int   `json:"exitcode"`
	OutData  string `json:"out-data"`
	ErrData  string `json:"err-data"`
}

// exec runs a command through guest-exec and polls guest-exec-status.
func (q *qgaClient) exec(ctx context.Context, path string, args []string, stdin []byte) (stdout, stderr string, code int, err error) {
	req := map[string]any{"path": path, "arg": args, "capture-output": true}
	if stdin != nil {
		req["input-data"] = base64.StdEncoding.EncodeToString(stdin)
	}
	var started struct {
		PID int `json:"pid"`
	}
	if err := q.call(ctx, "guest-exec", req, &started); err != nil {
		return "", "", 0, err
	}
	var st execStatus
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		st = execStatus{}
		if err := q.call(ctx, "guest-exec-status", map[string]int{"pid": started.PID}, &st); err != nil {
			return false, err
		}
		return st.Exited, nil
	})
	if err != nil {
		return "", "", 0, err
	}
	if st.ExitCode == nil {
		return "", "", 0, fmt.Errorf("guest-exec-status: exited without an exit code: %+v", st)
	}
	out, _ := base64.StdEncoding.DecodeString(st.OutData)
	errOut, _ := base64.StdEncoding.DecodeString(st.ErrData)
	return string(out), string(errOut), *st.ExitCode, nil
}

// httpGet fetches url from inside the test namespace.
func (n *testNet) httpGet(ctx context.Context, url string) (string, error) {
	client := &http.Client{Transport: &http.Transport{DialContext: n.dial, DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}
