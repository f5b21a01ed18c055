// Command guestinit is PID 1 of evelet's test VM guest (package
// images/vmguest builds it into the guest's initramfs as /init).
//
// It mounts the kernel file systems, loads the kernel modules listed in
// /lib/modules/load-order (virtio, net, console, ACPI button: the build
// resolved their dependencies and order), brings up lo and every NIC, takes
// an IPv4 address by DHCP on each NIC, serves HTTP on :80, answers the QEMU
// guest agent protocol on the virtio-serial port org.qemu.guest_agent.0,
// and powers the machine off on the ACPI power button or guest-shutdown.
//
// Everything it does is logged on the console (ttyS0) as lines starting
// with "evelet-guest: ". Once every NIC has an address (or the DHCP wait
// ran out; the failing NIC is named) it prints the line
// "evelet-guest: ready" (vmguest.ReadyLine).
//
// HTTP: GET / answers "evelet-guest <hostname> <ip>[,<ip>...]\n".
//
// Kernel command line parameters it reads: evelet.hostname=NAME (default:
// the host name offered by DHCP, else "evelet-guest") and
// evelet.dhcp_timeout=SECONDS (default 60), how long to wait for leases
// before printing the ready line anyway.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// readyLine must equal vmguest.ReadyLine; the build's tests check it.
const readyLine = "evelet-guest: ready"

const defaultHostname = "evelet-guest"

var logMu sync.Mutex

// logf writes one line to the console (stdout of PID 1 is /dev/console).
func logf(format string, args ...any) {
	logMu.Lock()
	defer logMu.Unlock()
	fmt.Fprintf(os.Stdout, "evelet-guest: "+format+"\n", args...)
}

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "guestinit: must run as PID 1 of a VM guest")
		os.Exit(2)
	}
	start := time.Now()
	os.Setenv("PATH", "/sbin:/bin")
	os.Setenv("HOME", "/")
	// The DHCP client's transaction IDs come from u-root's rand, which
	// spins on getrandom(GRND_NONBLOCK) until the kernel's CRNG is ready:
	// in a guest without a virtio-rng device that never happens (only a
	// blocking getrandom starts the kernel's jitter entropy), and the spin
	// eats the vCPU. Transaction IDs need no cryptographic quality: read
	// /dev/urandom instead.
	os.Setenv("UROOT_NOHWRNG", "1")
	mountAll()
	reaper := startReaper()

	params := cmdline()
	loadModules("/lib/modules/load-order")

	hostname := params["evelet.hostname"]
	timeout := 60 * time.Second
	if s := params["evelet.dhcp_timeout"]; s != "" {
		if n, err := strconv.Atoi(s); err == nil && n > 0 {
			timeout = time.Duration(n) * time.Second
		}
	}

	go watchPowerButton()

	netState := newNetState()
	nics, err := setupLinks()
	if err != nil {
		logf("network: %v", err)
	}

	// HTTP first: when the ready line appears, it must already answer.
	ln, err := net.Listen("tcp", ":80")
	if err != nil {
		logf("http: %v", err)
	} else {
		go func() {
			err := http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/" {
					http.NotFound(w, r)
					return
				}
				fmt.Fprintf(w, "evelet-guest %s %s\n", currentHostname(), strings.Join(netState.ips(), ","))
			}))
			logf("http: %v", err)
		}()
		logf("http: serving on :80")
	}

	go serveAgent(reaper)

	ctx := context.Background()
	results := make(chan nicResult, len(nics))
	for _, nic := range nics {
		go runDHCP(ctx, nic, netState, results)
	}
	deadline := time.After(timeout)
	pending := map[string]bool{}
	for _, n := range nics {
		pending[n] = true
	}
	var offeredName string
wait:
	for len(pending) > 0 {
		select {
		case r := <-results:
			delete(pending, r.nic)
			if r.err != nil {
				logf("dhcp %s: %v", r.nic, r.err)
			} else if offeredName == "" {
				offeredName = r.hostname
			}
		case <-deadline:
			for n := range pending {
				logf("dhcp %s: no lease after %s", n, timeout)
			}
			break wait
		}
	}
	if hostname == "" {
		hostname = offeredName
	}
	if hostname == "" {
		hostname = defaultHostname
	}
	if err := unix.Sethostname([]byte(hostname)); err != nil {
		logf("hostname: %v", err)
	}
	logf("hostname %s, addresses %s, %.2fs after init started", hostname, strings.Join(netState.describe(), " "), time.Since(start).Seconds())
	logMu.Lock()
	fmt.Fprintln(os.Stdout, readyLine)
	logMu.Unlock()
	select {}
}

func currentHostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" || h == "(none)" {
		return defaultHostname
	}
	return h
}

// mountAll mounts what the guest's programs expect. Failures are logged,
// not fatal: a guest that cannot mount devpts can still serve HTTP.
func mountAll() {
	mounts := []struct {
		fstype, target string
		flags          uintptr
		data           string
	}{
		{"proc", "/proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", unix.MS_NOSUID, "mode=0755"},
		{"devpts", "/dev/pts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=620,ptmxmode=666"},
		{"tmpfs", "/run", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"tmpfs", "/tmp", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			logf("mkdir %s: %v", m.target, err)
			continue
		}
		if err := unix.Mount(m.fstype, m.target, m.fstype, m.flags, m.data); err != nil && err != unix.EBUSY {
			logf("mount %s on %s: %v", m.fstype, m.target, err)
		}
	}
}

// cmdline parses /proc/cmdline into key=value pairs (flags map to "").
func cmdline() map[string]string {
	params := map[string]string{}
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		logf("cmdline: %v", err)
		return params
	}
	for _, f := range strings.Fields(string(b)) {
		k, v, _ := strings.Cut(f, "=")
		params[k] = v
	}
	return params
}

// loadModules loads each module listed (one path per line, dependencies
// first) with finit_module. A module built in or already loaded is fine.
func loadModules(listPath string) {
	b, err := os.ReadFile(listPath)
	if err != nil {
		logf("modules: %v", err)
		return
	}
	var loaded []string
	for _, p := range strings.Fields(string(b)) {
		f, err := os.Open(p)
		if err != nil {
			logf("module %s: %v", p, err)
			continue
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && err != unix.EEXIST {
			logf("module %s: %v", p, err)
			continue
		}
		name := p[strings.LastIndex(p, "/")+1:]
		loaded = append(loaded, strings.TrimSuffix(name, ".ko"))
	}
	logf("modules loaded: %s", strings.Join(loaded, " "))
}
