package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lf-edge/evelet/tests/containerd"
	"github.com/lf-edge/evelet/tests/internal/proc"
	"github.com/vishvananda/netlink"
)

// fix is what every refusal tells the user to run.
const fix = "`make demo-down`"

// preflight makes the host ready for a demo before anything starts, so
// that `make demo` either starts or refuses in one line with the fix
// instead of timing out minutes later (a kubelet that cannot bind its port
// never becomes Ready). A running demo (the machine lock is held) or a port
// taken by something else is refused; what a dead demo left (processes
// naming its directory, mounts, pods in its cgroup root, its bridge) is
// removed, since nothing else owns it. The host facts are fields so unit
// tests can swap them.
type preflight struct {
	dir          string // the demo directory (_output/demo)
	ports        []port
	bridge       string
	lock         *hostLock
	clearCgroups func() error           // kill and remove the demo cgroup root
	linkExists   func(name string) bool // a network interface of that name exists
	linkDel      func(name string) error
}

func newPreflight(dir string) preflight {
	return preflight{
		dir: dir, ports: demoPorts, bridge: bridgeName, lock: newHostLock(),
		clearCgroups: func() error { return removeCgroupRoot(cgroupRoot) },
		linkExists:   func(name string) bool { _, err := netlink.LinkByName(name); return err == nil },
		linkDel: func(name string) error {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			return netlink.LinkDel(l)
		},
	}
}

// check returns nil when the demo can start, else one error whose text is
// the line to print. It clears a dead demo's leftovers on the way and
// prints what it removed.
func (p preflight) check() error {
	if err := p.running(); err != nil {
		return err
	}
	removed, err := p.clearLeftovers()
	if len(removed) > 0 {
		fmt.Printf("demo: removed what a previous demo left: %s\n", strings.Join(removed, "; "))
	}
	if err != nil {
		return fmt.Errorf("clearing what a previous demo left: %v: %s retries", err, fix)
	}
	for _, pt := range p.ports {
		if err := portFree(pt.num); err != nil {
			who := ""
			if pid, name := portHolder(pt.num); pid > 0 {
				who = fmt.Sprintf(" by pid %d (%s)", pid, name)
			}
			return fmt.Errorf("port %d (%s) is already in use%s: stop that process, or run %s if it is a leftover demo", pt.num, pt.what, who, fix)
		}
	}
	return nil
}

// running refuses when a demo holds the machine lock, from this clone or
// another one.
func (p preflight) running() error {
	held, o := p.lock.held()
	if !held {
		return nil
	}
	if o.Dir != "" && o.Dir != p.dir {
		return fmt.Errorf("the demo is already running (pid %d, started in %s): %s there stops it", o.PID, o.Dir, fix)
	}
	return fmt.Errorf("the demo is already running (pid %d): %s stops it", o.PID, fix)
}

// clearLeftovers removes what a demo that is no longer running left on the
// host; call it only when the lock is free. It returns what it removed.
func (p preflight) clearLeftovers() ([]string, error) {
	var removed []string
	var errs []error
	if pids := procsUnder(p.dir); len(pids) > 0 {
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		// They must be gone before their mounts and cgroups are removed.
		if err := waitUntil(context.Background(), 10*time.Second, func() bool { return len(procsUnder(p.dir)) == 0 }); err != nil {
			errs = append(errs, fmt.Errorf("processes %v survived SIGKILL", procsUnder(p.dir)))
		}
		removed = append(removed, fmt.Sprintf("killed processes %v", pids))
	}
	if _, err := os.Stat(p.dir); err == nil {
		if err := containerd.Cleanup(ctrdOptions(p.dir)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := p.clearCgroups(); err != nil {
		errs = append(errs, err)
	}
	if m := mountsUnder(p.dir); len(m) > 0 {
		unmount(p.dir)
		removed = append(removed, fmt.Sprintf("%d mounts under %s", len(m), p.dir))
	}
	if p.linkExists(p.bridge) {
		if err := p.linkDel(p.bridge); err != nil {
			errs = append(errs, fmt.Errorf("deleting the bridge %s: %w", p.bridge, err))
		} else {
			removed = append(removed, "the bridge "+p.bridge)
		}
	}
	return removed, errors.Join(errs...)
}

// portFree reports whether a TCP listener could take port on every address
// (the kubelet binds 0.0.0.0, which collides with any listener on the port).
func portFree(port int) error {
	l, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return err
	}
	return l.Close()
}

// portHolder finds the process listening on a TCP port from /proc/net/tcp*
// and the socket links in /proc/<pid>/fd (0 if it cannot tell, e.g. the
// holder is in another network namespace).
func portHolder(port int) (int, string) {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		for _, ino := range listeningInodes(f, port) {
			inodes["socket:["+ino+"]"] = true
		}
	}
	if len(inodes) == 0 {
		return 0, ""
	}
	for _, pid := range append(proc.PIDs(), os.Getpid()) {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
			if err == nil && inodes[l] {
				comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
				return pid, strings.TrimSpace(string(comm))
			}
		}
	}
	return 0, ""
}

// listeningInodes parses one /proc/net/tcp table: the socket inodes in
// state LISTEN (0A) on the given local port.
func listeningInodes(table string, port int) []string {
	f, err := os.Open(table)
	if err != nil {
		return nil
	}
	defer f.Close()
	var res []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		fs := strings.Fields(sc.Text())
		if len(fs) < 10 || fs[3] != "0A" {
			continue
		}
		i := strings.LastIndexByte(fs[1], ':')
		if p, err := strconv.ParseUint(fs[1][i+1:], 16, 16); err == nil && int(p) == port {
			res = append(res, fs[9])
		}
	}
	return res
}

// procsUnder lists processes whose command line names a path under dir:
// the demo's etcd, apiserver, containerd, shims, agent and kubelet all do.
func procsUnder(dir string) []int {
	var pids []int
	needle := []byte(filepath.Clean(dir) + "/")
	for _, pid := range proc.PIDs() {
		if pid == os.Getppid() {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !bytes.Contains(b, needle) {
			continue
		}
		if st, ok := proc.ReadStat(pid); ok && st.State != 'Z' {
			pids = append(pids, pid)
		}
	}
	return pids
}

// mountsUnder lists the mount points under dir from /proc/self/mountinfo.
func mountsUnder(dir string) []string {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		real = dir
	}
	m, _ := containerd.Mounts(real)
	return m
}
