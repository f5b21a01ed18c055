package containerd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/moby/sys/mountinfo"
	"github.com/vishvananda/netlink"

	"github.com/lf-edge/evelet/tests/internal/proc"
)

// runcContainer is what the forced cleanup needs to know about a container
// that runc still has state for.
type runcContainer struct {
	root    string // runc --root
	id      string
	sandbox bool
	netns   string // network namespace path of a sandbox, if any
}

// forceCleanup removes what a stopped containerd left behind: runc
// containers, CNI attachments of their sandboxes, shims, mounts, the bridge.
func (c *Containerd) forceCleanup() []error {
	var errs []error
	ctrs, err := c.runcContainers()
	if err != nil {
		errs = append(errs, err)
	}
	// Application containers first, then sandboxes: a sandbox's pause holds
	// the pod's namespaces.
	sort.SliceStable(ctrs, func(i, j int) bool { return !ctrs[i].sandbox && ctrs[j].sandbox })
	for _, ct := range ctrs {
		out, err := exec.Command(c.l.runc, "--root", ct.root, "delete", "--force", ct.id).CombinedOutput()
		if err != nil {
			errs = append(errs, fmt.Errorf("containerd: runc delete --force %s: %w: %s", ct.id, err, bytes.TrimSpace(out)))
		}
	}
	for _, ct := range ctrs {
		// In a namespace of its own, CNI's work (bridge, NAT rules) lies in
		// that namespace and goes with it; the host must not be touched.
		if ct.sandbox && c.l.netns == "" {
			if err := c.cniDel(ct); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if c.l.netns == "" {
		now, err := masqRules(c.l.network, c.l.podCIDR)
		if err == nil {
			err = sweepMasq(c.masqBefore, now)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.killShims(); err != nil {
		errs = append(errs, err)
	}
	if err := unmountUnder(c.l.dir, c.l.socketDir); err != nil {
		errs = append(errs, err)
	}
	if !c.bridgeExisted && c.l.netns == "" {
		if link, err := netlink.LinkByName(c.l.bridge); err == nil {
			if err := netlink.LinkDel(link); err != nil {
				errs = append(errs, fmt.Errorf("containerd: deleting bridge %s: %w", c.l.bridge, err))
			}
		}
	}
	return errs
}

// runcContainers lists the containers runc has state for under our runc
// root (one sub-directory per containerd namespace).
func (c *Containerd) runcContainers() ([]runcContainer, error) {
	nss, err := os.ReadDir(c.l.runcRoot)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("containerd: %w", err)
	}
	var res []runcContainer
	var errs []error
	for _, ns := range nss {
		if !ns.IsDir() {
			continue
		}
		root := filepath.Join(c.l.runcRoot, ns.Name())
		out, err := exec.Command(c.l.runc, "--root", root, "list", "--format", "json").Output()
		if err != nil {
			errs = append(errs, fmt.Errorf("containerd: runc --root %s list: %w", root, err))
			continue
		}
		var list []struct {
			ID          string            `json:"id"`
			Bundle      string            `json:"bundle"`
			Annotations map[string]string `json:"annotations"`
		}
		if s := bytes.TrimSpace(out); len(s) > 0 && !bytes.Equal(s, []byte("null")) {
			if err := json.Unmarshal(s, &list); err != nil {
				errs = append(errs, fmt.Errorf("containerd: runc list: %w", err))
				continue
			}
		}
		for _, e := range list {
			ct := runcContainer{root: root, id: e.ID}
			ct.sandbox = e.Annotations["io.kubernetes.cri.container-type"] == "sandbox"
			if ct.sandbox {
				ct.netns = bundleNetNS(e.Bundle)
			}
			res = append(res, ct)
		}
	}
	return res, errors.Join(errs...)
}

// bundleNetNS reads the network namespace path from an OCI bundle's
// config.json ("" if the sandbox has none, e.g. host network).
func bundleNetNS(bundle string) string {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return ""
	}
	var spec struct {
		Linux struct {
			Namespaces []struct {
				Type string `json:"type"`
				Path string `json:"path"`
			} `json:"namespaces"`
		} `json:"linux"`
	}
	if json.Unmarshal(b, &spec) != nil {
		return ""
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == "network" {
			return ns.Path
		}
	}
	return ""
}

// cniDel runs CNI DEL for a sandbox that containerd never tore down, so the
// bridge plugin drops its NAT rules and host-local frees the address. It
// must run while the namespace's bind mount is still there.
func (c *Containerd) cniDel(ct runcContainer) error {
	if ct.netns == "" {
		return nil
	}
	if _, err := os.Stat(ct.netns); err != nil {
		return nil // no namespace, no attachment left
	}
	list, err := libcni.ConfListFromFile(c.l.conflistPath())
	if err != nil {
		return fmt.Errorf("containerd: CNI DEL %s: %w", ct.id, err)
	}
	// The CRI attaches the loopback as a network of its own; deleting it
	// too clears its entry from libcni's result cache (/var/lib/cni).
	lo, err := libcni.ConfListFromBytes([]byte(loopbackConflist))
	if err != nil {
		return fmt.Errorf("containerd: %w", err)
	}
	cni := libcni.NewCNIConfig([]string{c.l.cniBinDir}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for _, n := range []struct {
		list   *libcni.NetworkConfigList
		ifName string
	}{{list, "eth0"}, {lo, "lo"}} {
		rt := &libcni.RuntimeConf{ContainerID: ct.id, NetNS: ct.netns, IfName: n.ifName}
		if err := cni.DelNetworkList(ctx, n.list, rt); err != nil {
			errs = append(errs, fmt.Errorf("containerd: CNI DEL %s %s: %w", n.list.Name, ct.id, err))
		}
	}
	return errors.Join(errs...)
}

// loopbackConflist mirrors the loopback network containerd 1.6's CRI
// configures for every pod (go-cni's "cni-loopback").
const loopbackConflist = `{"cniVersion": "0.3.1", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}`

// shimPIDs finds the shims serving our containerd: their command line has
// "-address <our socket>". They are not our children (a shim daemonizes),
// so /proc is the way to find them.
func (c *Containerd) shimPIDs() []int {
	return findProcs(func(argv []string) bool {
		if len(argv) == 0 || !strings.HasPrefix(filepath.Base(argv[0]), "containerd-shim") {
			return false
		}
		for i, a := range argv {
			if (a == "-address" || a == "--address") && i+1 < len(argv) && argv[i+1] == c.l.socket {
				return true
			}
			if a == "-address="+c.l.socket || a == "--address="+c.l.socket {
				return true
			}
		}
		return false
	})
}

// ShimPIDs reports the containerd-shim processes still serving this
// containerd's socket (for tests that check nothing is left behind).
func (c *Containerd) ShimPIDs() []int { return c.shimPIDs() }

// killShims SIGKILLs our shims and whatever they still parent (container
// init processes runc lost track of), then waits for them to disappear.
func (c *Containerd) killShims() error {
	shims := c.shimPIDs()
	if len(shims) == 0 {
		return nil
	}
	isShim := map[int]bool{}
	for _, p := range shims {
		isShim[p] = true
	}
	var sockets []string
	for _, p := range shims {
		if s := shimSocket(p); s != "" {
			sockets = append(sockets, s)
		}
	}
	children := findProcsByParent(isShim)
	victims := append(children, shims...)
	for _, p := range victims {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var alive []int
		for _, p := range victims {
			if processAlive(p) {
				alive = append(alive, p)
			}
		}
		if len(alive) == 0 {
			// A killed shim cannot remove its socket: do it for it.
			for _, s := range sockets {
				if st, err := os.Lstat(s); err == nil && st.Mode()&os.ModeSocket != 0 {
					os.Remove(s)
				}
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd: processes %v survived SIGKILL", alive)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// shimSocketDir is where containerd 1.6 puts every shim's ttrpc socket,
// whatever its state directory (defaults.DefaultStateDir + "/s").
const shimSocketDir = "/run/containerd/s"

// shimSocket derives a shim's socket path from its command line the way
// containerd 1.6 names it: sha256 of "<containerd address>/<namespace>/<id>"
// under /run/containerd/s. "" if the command line lacks a part.
func shimSocket(pid int) string {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	argv := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	flags := map[string]string{}
	for i := 0; i+1 < len(argv); i++ {
		if strings.HasPrefix(argv[i], "-") {
			flags[strings.TrimLeft(argv[i], "-")] = argv[i+1]
		}
	}
	addr, ns, id := flags["address"], flags["namespace"], flags["id"]
	if addr == "" || ns == "" || id == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(filepath.Join(addr, ns, id)))
	return filepath.Join(shimSocketDir, hex.EncodeToString(sum[:]))
}

// findProcs returns the pids whose argv satisfies match.
func findProcs(match func(argv []string) bool) []int {
	var pids []int
	for _, pid := range proc.PIDs() {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(raw) == 0 {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if match(argv) && processAlive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// findProcsByParent returns the live processes whose parent is in parents.
func findProcsByParent(parents map[int]bool) []int {
	var pids []int
	for _, pid := range proc.PIDs() {
		if st, ok := proc.ReadStat(pid); ok && parents[st.PPID] && st.State != 'Z' {
			pids = append(pids, pid)
		}
	}
	return pids
}

// processAlive is false for gone processes and for zombies (dead, waiting
// for their parent to reap them).
func processAlive(pid int) bool {
	st, ok := proc.ReadStat(pid)
	state := st.State
	return ok && state != 'Z' && state != 'X'
}

// Mounts returns the mount points under dir (itself included), from
// /proc/self/mountinfo (moby/sys/mountinfo, which also undoes its octal
// escapes), deepest first.
func Mounts(dir string) ([]string, error) {
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(filepath.Clean(dir)))
	if err != nil {
		return nil, err
	}
	res := make([]string, 0, len(ms))
	for _, m := range ms {
		res = append(res, m.Mountpoint)
	}
	// Deepest first; for the same path, the later (upper) mount first.
	for i, j := 0, len(res)-1; i < j; i, j = i+1, j-1 {
		res[i], res[j] = res[j], res[i]
	}
	sort.SliceStable(res, func(i, j int) bool {
		return strings.Count(res[i], "/") > strings.Count(res[j], "/")
	})
	return res, nil
}

// unmountUnder lazily unmounts everything mounted under the given
// directories, deepest first, until nothing is left.
func unmountUnder(dirs ...string) error {
	var last []string
	for pass := 0; pass < 5; pass++ {
		var all []string
		for _, d := range dirs {
			m, err := Mounts(d)
			if err != nil {
				return fmt.Errorf("containerd: reading mounts: %w", err)
			}
			all = append(all, m...)
		}
		if len(all) == 0 {
			return nil
		}
		last = all
		for _, mp := range all {
			err := syscall.Unmount(mp, syscall.MNT_DETACH)
			if err != nil && err != syscall.EINVAL && err != syscall.ENOENT {
				return fmt.Errorf("containerd: unmount %s: %w", mp, err)
			}
		}
	}
	return fmt.Errorf("containerd: still mounted after unmounting: %v", last)
}
