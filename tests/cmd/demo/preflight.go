package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/lf-edge/evelet/tests/containerd"
	"github.com/lf-edge/evelet/tests/internal/cgroups"
	"github.com/lf-edge/evelet/tests/internal/proc"
	"github.com/vishvananda/netlink"
)

// fix is what every refusal tells the user to run.
const fix = "`make demo-down`"

// preflight checks, before anything starts, that nothing the demo needs is
// taken, so that `make demo` refuses in one line with the fix instead of
// timing out minutes later (a kubelet that cannot bind its port never
// becomes Ready). The host facts are fields so unit tests can swap them.
type preflight struct {
	dir        string // the demo directory (_output/demo)
	ports      []port
	bridge     string
	cgroupDirs func() []string        // the demo cgroup root in each hierarchy
	linkExists func(name string) bool // a network interface of that name exists
}

func newPreflight(dir string) preflight {
	return preflight{
		dir: dir, ports: demoPorts, bridge: bridgeName,
		cgroupDirs: func() []string { return cgroups.Dirs(cgroupRoot) },
		linkExists: func(name string) bool { _, err := netlink.LinkByName(name); return err == nil },
	}
}

// check returns nil when the demo can start, else one error whose text is
// the line to print.
func (p preflight) check() error {
	if s, err := readState(p.dir); err == nil && alive(s.PID) {
		return fmt.Errorf("the demo is already running (pid %d): %s stops it", s.PID, fix)
	}
	if pids := procsUnder(p.dir); len(pids) > 0 {
		return fmt.Errorf("processes of a previous demo are still running (pids %v): %s stops them", pids, fix)
	}
	if m := mountsUnder(p.dir); len(m) > 0 {
		return fmt.Errorf("a previous demo left %d mounts under %s: %s removes them", len(m), p.dir, fix)
	}
	if p.linkExists(p.bridge) {
		return fmt.Errorf("the network interface %s (the demo's pod bridge) already exists, left by a previous demo: %s removes it", p.bridge, fix)
	}
	for _, d := range p.cgroupDirs() {
		if n := len(cgroups.PIDs(d)); n > 0 {
			return fmt.Errorf("%d processes of a previous demo are still in cgroup %s: %s stops them", n, d, fix)
		}
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
