// Package containerd runs a real containerd for evelet's tests and demos.
//
// Start writes a containerd 1.6 configuration (CRI plugin, runc through
// io.containerd.runc.v2 with cgroupfs, a bridge CNI network as the node's
// default pod network) whose every state path lies under Options.Dir, starts
// containerd as a child process, and waits until its CRI answers with the
// runtime and the network ready. Stop takes everything down again: pods,
// containerd, leftover shims and containers, mounts, the bridge.
//
// It needs root, containerd (1.6), containerd-shim-runc-v2, runc and the CNI
// plugins (Debian: containerd, runc, containernetworking-plugins).
//
// Two things still touch shared host paths, because containerd 1.6 hard-codes
// them: the shims' sockets live in /run/containerd/s/ (each shim removes its
// own), and the CRI's CNI result cache lives in /var/lib/cni/results (CNI DEL
// removes its entry; Stop removes those of pods it had to kill itself).
package containerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/lf-edge/evelet/tests/internal/proc"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/vishvananda/netlink"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/images"
)

// Options configure a containerd harness. Only Dir is required.
type Options struct {
	// Dir is the root of all state: config, containerd root and state,
	// runc root, CNI configuration and IPAM data, the log. The socket is
	// Dir/run/containerd.sock unless that path is too long for a unix
	// socket; then it goes into a short directory under /tmp.
	Dir string
	// RunDir, if set, takes the volatile part of the state out of Dir, as
	// a device keeps it on a tmpfs that a reboot empties: containerd's
	// state (task bundles, pod network namespaces), the runc root, CNI
	// IPAM data and the socket (RunDir/containerd.sock). Dir keeps the
	// config, the log, containerd's root (content, snapshots, metadata).
	RunDir string
	// NetNS, if set, is the path of a network namespace (e.g.
	// /run/netns/<name>) containerd runs in, and so its shims, its CRI
	// stream server and every CNI plugin it runs: started with
	// `nsenter --net=<NetNS>`, only the network namespace, so that the
	// kubelet's mounts stay visible to containerd and runc. The pod bridge
	// is then made inside that namespace; Stop leaves the namespace and
	// what CNI made in it (bridge, NAT rules) to the namespace's owner.
	NetNS string
	// SandboxImage is the CRI's pause image (default images.PauseRef). It
	// must be imported (ImportImages) before the first pod: nothing is
	// pulled from a registry here.
	SandboxImage string
	// CNIBinDir holds the CNI plugins (default /usr/lib/cni, Debian's).
	CNIBinDir string
	// CNIConfDir receives the default network's conflist and is the CRI's
	// CNI conf_dir (default Dir/cni/net.d).
	CNIConfDir string
	// PodCIDR is the default pod network's subnet (default 10.88.0.0/16).
	PodCIDR string
	// BridgeName is the Linux bridge of the default pod network, at most 15
	// characters (default "evelet0").
	BridgeName string
	// NetworkName names the default pod network (default "evelet-default").
	// libcni's result cache in /var/lib/cni/results is shared by every
	// containerd on the host; a name of its own keeps a harness's entries
	// apart from the others'.
	NetworkName string
	// RestrictOOMScoreAdj sets the CRI's restrict_oom_score_adj. Test
	// machines lack CAP_SYS_RESOURCE and need true; real EVE devices keep
	// the production default, false.
	RestrictOOMScoreAdj bool
	// RegistryMirrors maps a registry host (e.g. "registry.k8s.io") to an
	// endpoint URL serving it (e.g. a registry on loopback), so that images
	// can be pulled by their upstream names without the internet.
	RegistryMirrors map[string]string
	// Log, if set, receives a copy of containerd's log (the file at
	// LogPath() always has it).
	Log io.Writer

	// Snapshotter of the CRI plugin and of imports (default "overlayfs").
	Snapshotter string
	// ContainerdBinary, CtrBinary and RuncBinary default to "containerd",
	// "ctr" and "runc" found on $PATH (plus the usual sbin directories).
	ContainerdBinary string
	CtrBinary        string
	RuncBinary       string
	// StartTimeout bounds the wait for the CRI to become ready (default
	// 60 s).
	StartTimeout time.Duration
}

// Containerd is a running containerd started by Start. Its getters may be
// called from any goroutine; Restart and Stop must not run concurrently.
type Containerd struct {
	l          *layout
	log        io.Writer
	containerd string
	ctr        string
	nsenter    string // set when Options.NetNS is
	timeout    time.Duration

	bridgeExisted bool
	masqBefore    map[string]masqRule // the network's masquerade chains at Start

	// skipCRICleanup makes Stop skip removing pods through the CRI, so that
	// tests can exercise the forced cleanup path.
	skipCRICleanup bool

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has been waited for
	logFile *os.File
	stopped bool
}

const (
	stopGrace   = 10 * time.Second
	criCleanup  = 60 * time.Second
	logTailSize = 256 << 10
	startMarker = "--- evelet harness: starting"
)

// Start writes the configuration, starts containerd and waits until its CRI
// reports RuntimeReady and NetworkReady. On failure nothing is left running
// and the error carries the tail of containerd's log.
func Start(ctx context.Context, o Options) (*Containerd, error) {
	l, err := newLayout(o)
	if err != nil {
		return nil, err
	}
	c := &Containerd{l: l, log: o.Log, timeout: o.StartTimeout}
	if c.timeout <= 0 {
		c.timeout = 60 * time.Second
	}
	fail := func(err error) (*Containerd, error) {
		if l.ownSocketDir {
			os.RemoveAll(l.socketDir)
		}
		return nil, err
	}
	if c.containerd, err = findBinary(o.ContainerdBinary, "containerd"); err != nil {
		return fail(err)
	}
	if c.ctr, err = findBinary(o.CtrBinary, "ctr"); err != nil {
		return fail(err)
	}
	if _, err := findBinary("", "containerd-shim-runc-v2"); err != nil {
		return fail(err)
	}
	if l.netns != "" {
		if c.nsenter, err = findBinary("", "nsenter"); err != nil {
			return fail(err)
		}
	}
	if err := l.writeFiles(); err != nil {
		return fail(err)
	}
	if _, err := netlink.LinkByName(l.bridge); err == nil {
		c.bridgeExisted = true
	}
	if l.netns == "" {
		if c.masqBefore, err = masqRules(l.network, l.podCIDR); err != nil {
			return fail(err)
		}
	}
	c.logFile, err = os.OpenFile(l.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fail(fmt.Errorf("containerd: %w", err))
	}
	if err := c.startProcess(ctx); err != nil {
		c.logFile.Close()
		return fail(err)
	}
	return c, nil
}

// startProcess starts containerd and waits for readiness; on failure the
// process is killed and waited for.
func (c *Containerd) startProcess(ctx context.Context) error {
	// A socket left by a killed containerd would make the readiness probe
	// talk to nothing; containerd replaces it anyway.
	os.Remove(c.l.socket)
	fmt.Fprintf(c.logFile, "%s %s --config %s at %s\n", startMarker,
		c.containerd, c.l.configPath, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(c.containerd, "--config", c.l.configPath)
	if c.l.netns != "" {
		// nsenter execs containerd in place: the pid stays containerd's.
		cmd = exec.Command(c.nsenter, "--net="+c.l.netns, "--", c.containerd, "--config", c.l.configPath)
	}
	// Its own process group: a terminal's Ctrl-C reaches the demo, not
	// containerd, and Stop decides the order of shutdown.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Env = append(os.Environ(), "PATH="+os.Getenv("PATH")+":"+searchPath)
	if c.log != nil {
		w := io.MultiWriter(c.logFile, c.log)
		cmd.Stdout, cmd.Stderr = w, w
		// Should a child keep the pipe open, Wait must not hang on it.
		cmd.WaitDelay = 2 * time.Second
	} else {
		cmd.Stdout, cmd.Stderr = c.logFile, c.logFile
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("containerd: starting %s: %w", c.containerd, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	c.mu.Lock()
	c.cmd, c.exited = cmd, exited
	c.mu.Unlock()

	if err := c.waitReady(ctx, exited); err != nil {
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("%w\n--- tail of %s ---\n%s", err, c.l.logPath, c.logTail())
	}
	return nil
}

// waitReady polls the CRI Status RPC until runtime and network are ready.
func (c *Containerd) waitReady(ctx context.Context, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var conn *grpc.ClientConn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	last := errors.New("socket not created yet")
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-exited:
			return fmt.Errorf("containerd: exited during startup (%s); last probe: %v", c.exitStatus(), last)
		case <-ctx.Done():
			return fmt.Errorf("containerd: not ready after %v: %v", c.timeout, last)
		case <-tick.C:
		}
		if _, err := os.Stat(c.l.socket); err != nil {
			continue
		}
		if conn == nil {
			var err error
			if conn, err = dial(c.l.socket); err != nil {
				last = err
				continue
			}
		}
		err := probe(ctx, runtimeapi.NewRuntimeServiceClient(conn))
		if err == nil {
			return nil
		}
		if ctx.Err() == nil { // keep the last meaningful answer
			last = err
		}
	}
}

// probe asks the CRI for its status and returns nil when the runtime and
// the network are both ready.
func probe(ctx context.Context, rs runtimeapi.RuntimeServiceClient) error {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := rs.Status(pctx, &runtimeapi.StatusRequest{})
	if status.Code(err) == codes.Unimplemented {
		return fmt.Errorf("containerd answers but its CRI plugin is not loaded (see the log): %w", err)
	}
	if err != nil {
		return fmt.Errorf("CRI status: %w", err)
	}
	var notReady []string
	for _, want := range []string{runtimeapi.RuntimeReady, runtimeapi.NetworkReady} {
		ok := false
		for _, cond := range st.GetStatus().GetConditions() {
			if cond.GetType() == want && cond.GetStatus() {
				ok = true
			} else if cond.GetType() == want {
				notReady = append(notReady, fmt.Sprintf("%s: %s %s", want, cond.GetReason(), cond.GetMessage()))
			}
		}
		if !ok && len(notReady) == 0 {
			notReady = append(notReady, want+": not reported")
		}
	}
	if len(notReady) > 0 {
		return fmt.Errorf("CRI not ready: %s", strings.Join(notReady, "; "))
	}
	return nil
}

func dial(socket string) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
}

// DialCRI returns a gRPC connection to containerd's CRI (runtime and image
// services, k8s.io/cri-api runtime/v1). The caller closes it.
func (c *Containerd) DialCRI() (*grpc.ClientConn, error) {
	conn, err := dial(c.l.socket)
	if err != nil {
		return nil, fmt.Errorf("containerd: dial %s: %w", c.l.socket, err)
	}
	return conn, nil
}

func (c *Containerd) exitStatus() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil || c.cmd.ProcessState == nil {
		return "running"
	}
	return c.cmd.ProcessState.String()
}

// logTail summarizes containerd's log since its last start: every warning
// or error line, then the last lines, each cut to a readable length.
func (c *Containerd) logTail() string {
	lines, err := proc.TailLines(c.l.logPath, startMarker, logTailSize, 400)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	const lastN = 12
	for _, l := range lines[:max(0, len(lines)-lastN)] {
		if strings.Contains(l, "level=warning") || strings.Contains(l, "level=error") ||
			strings.Contains(l, "level=fatal") || strings.Contains(l, "level=panic") {
			b.WriteString(l + "\n")
		}
	}
	if len(lines) > lastN {
		b.WriteString("[...]\n")
	}
	for _, l := range lines[max(0, len(lines)-lastN):] {
		b.WriteString(l + "\n")
	}
	return b.String()
}

// Socket is the path of containerd's gRPC socket.
func (c *Containerd) Socket() string { return c.l.socket }

// Endpoint is the CRI endpoint in the kubelet's form, "unix://<socket>".
func (c *Containerd) Endpoint() string { return "unix://" + c.l.socket }

// Dir is the harness's state directory (Options.Dir, absolute, with
// symlinks resolved).
func (c *Containerd) Dir() string { return c.l.dir }

// LogPath is containerd's log file; it accumulates across restarts.
func (c *Containerd) LogPath() string { return c.l.logPath }

// ConfigPath is the generated containerd configuration.
func (c *Containerd) ConfigPath() string { return c.l.configPath }

// CNIConfDir is where the default network's conflist was written.
func (c *Containerd) CNIConfDir() string { return c.l.cniConfDir }

// Snapshotter is the snapshotter the CRI uses and imports unpack for.
func (c *Containerd) Snapshotter() string { return c.l.snapshotter }

// PID is the process id of the running containerd (0 once stopped).
func (c *Containerd) PID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil || c.cmd.Process == nil || c.stopped {
		return 0
	}
	return c.cmd.Process.Pid
}

// ImportImages imports image tarballs (docker-archive or OCI) into the
// k8s.io namespace, unpacked for the CRI's snapshotter, and waits until the
// CRI's image service lists every tagged image they contain.
func (c *Containerd) ImportImages(ctx context.Context, tars ...string) error {
	var refs []string
	for _, t := range tars {
		if err := images.ImportForSnapshotter(ctx, c.ctr, c.l.socket, Namespace, c.l.snapshotter, t); err != nil {
			return err
		}
		refs = append(refs, repoTags(t)...)
	}
	if len(refs) == 0 {
		return nil
	}
	conn, err := c.DialCRI()
	if err != nil {
		return err
	}
	defer conn.Close()
	is := runtimeapi.NewImageServiceClient(conn)
	// The CRI learns about images from containerd's events: give it a
	// moment so that the next CreateContainer does not race the import.
	deadline := time.Now().Add(30 * time.Second)
	for _, ref := range refs {
		for {
			st, err := is.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
			if err == nil && st.GetImage() != nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("containerd: imported %s but the CRI does not list it (err %v)", ref, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// Restart stops containerd alone (SIGTERM, SIGKILL after 10 s), leaving the
// shims and so the running containers alone, and starts it again with the
// same configuration. The CRI then recovers its pods from disk and the
// shims.
func (c *Containerd) Restart(ctx context.Context) error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return errors.New("containerd: Restart after Stop")
	}
	c.mu.Unlock()
	if err := c.stopProcess(); err != nil {
		return err
	}
	return c.startProcess(ctx)
}

// stopProcess sends SIGTERM to containerd (only containerd, not its process
// group), then SIGKILL after stopGrace, and waits for it.
func (c *Containerd) stopProcess() error {
	c.mu.Lock()
	cmd, exited := c.cmd, c.exited
	c.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-exited:
		return nil
	default:
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("containerd: SIGTERM: %w", err)
	}
	select {
	case <-exited:
		return nil
	case <-time.After(stopGrace):
	}
	fmt.Fprintf(c.logFile, "--- evelet harness: containerd ignored SIGTERM for %v, killing it\n", stopGrace)
	_ = cmd.Process.Kill()
	select {
	case <-exited:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("containerd: pid %d did not die after SIGKILL", cmd.Process.Pid)
	}
}

// Stop takes down everything Start and the pods brought up, best effort,
// and reports what it could not undo:
//   - while containerd still answers, every pod sandbox is stopped and
//     removed through the CRI (so CNI DEL frees addresses and NAT rules);
//   - containerd gets SIGTERM, then SIGKILL after 10 s;
//   - containers still known to runc under Dir are force-deleted, and shims
//     still serving this containerd's socket are killed;
//   - everything still mounted under Dir is unmounted (lazily, deepest
//     first) and the bridge is deleted if Start did not find it already.
//
// Stop is idempotent.
func (c *Containerd) Stop() error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return nil
	}
	c.stopped = true
	c.mu.Unlock()

	var errs []error
	if !c.skipCRICleanup {
		if err := c.removeAllPods(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.stopProcess(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.forceCleanup()...)
	if c.l.ownSocketDir {
		if err := os.RemoveAll(c.l.socketDir); err != nil {
			errs = append(errs, err)
		}
	}
	if c.logFile != nil {
		fmt.Fprintf(c.logFile, "--- evelet harness: stopped at %s\n", time.Now().Format(time.RFC3339Nano))
		c.logFile.Close()
	}
	return errors.Join(errs...)
}

// removeAllPods stops and removes every pod sandbox through the CRI, if
// containerd is still running. Errors are reported but do not stop the
// sweep: the forced cleanup comes after it anyway.
func (c *Containerd) removeAllPods() error {
	c.mu.Lock()
	exited := c.exited
	c.mu.Unlock()
	if exited == nil {
		return nil
	}
	select {
	case <-exited:
		return nil
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), criCleanup)
	defer cancel()
	conn, err := dial(c.l.socket)
	if err != nil {
		return nil
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	list, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		fmt.Fprintf(c.logFile, "--- evelet harness: cannot list pods for cleanup: %v\n", err)
		return nil
	}
	var errs []error
	for _, sb := range list.GetItems() {
		id := sb.GetId()
		if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
			errs = append(errs, fmt.Errorf("containerd: stop pod %s: %w", id, err))
			continue
		}
		if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			errs = append(errs, fmt.Errorf("containerd: remove pod %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// repoTags lists the tags named in a docker-archive's manifest.json (none
// for an OCI archive, or when the file cannot be read).
func repoTags(tarPath string) []string {
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(tarPath) })
	if err != nil {
		return nil
	}
	var tags []string
	for _, d := range m {
		tags = append(tags, d.RepoTags...)
	}
	return tags
}

// Cleanup removes what a harness with these Options left behind when the
// process that started it died without calling Stop (a killed demo): the
// containers runc still has under Options.Dir and their CNI attachments,
// shims serving its socket, mounts under Dir, and the bridge. Kill the
// containerd process itself first; Cleanup does not look for it.
func Cleanup(o Options) error {
	l, err := newLayout(o)
	if err != nil {
		return err
	}
	if l.ownSocketDir {
		// A fresh short socket dir: the old one is unknown, its shims are
		// found by the socket they serve only when Dir was short enough.
		defer os.RemoveAll(l.socketDir)
	}
	c := &Containerd{l: l}
	return errors.Join(c.forceCleanup()...)
}

// RemovePodsLoggingUnder stops and removes the pods whose log directory
// lies under dir: the pods one device's kubelet made on a containerd that
// several test devices share. A device's agent leaves its pods running when
// it stops (as on a real device), so a test ends its own with this, or they
// would run, and write logs into the test's removed directory, until the
// harness stops.
func (c *Containerd) RemovePodsLoggingUnder(ctx context.Context, dir string) error {
	conn, err := dial(c.l.socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	list, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("containerd: list pods: %w", err)
	}
	prefix := filepath.Clean(dir) + "/"
	var errs []error
	for _, sb := range list.GetItems() {
		st, err := rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sb.GetId(), Verbose: true})
		if err != nil {
			continue // gone meanwhile
		}
		// containerd's verbose status carries the sandbox's CRI config.
		var info struct {
			Config struct {
				LogDirectory string `json:"log_directory"`
			} `json:"config"`
		}
		if json.Unmarshal([]byte(st.GetInfo()["info"]), &info) != nil || !strings.HasPrefix(info.Config.LogDirectory, prefix) {
			continue
		}
		if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.GetId()}); err != nil {
			errs = append(errs, fmt.Errorf("containerd: stop pod %s: %w", sb.GetId(), err))
			continue
		}
		if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.GetId()}); err != nil {
			errs = append(errs, fmt.Errorf("containerd: remove pod %s: %w", sb.GetId(), err))
		}
	}
	return errors.Join(errs...)
}
