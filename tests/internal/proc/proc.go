// Package proc holds the few /proc and log-file readers the test harnesses
// (tests/containerd, tests/controlplane) share to find and report on the
// processes they start.
package proc

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Stat is the part of /proc/<pid>/stat the harnesses use.
type Stat struct {
	State byte // R, S, D, Z, X, ...
	PPID  int
	PGRP  int
}

// ReadStat parses /proc/<pid>/stat; ok is false when the process is gone
// or the file does not parse.
func ReadStat(pid int) (Stat, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Stat{}, false
	}
	// comm is in parentheses and may contain anything: parse after the last
	// ')'. Then: state ppid pgrp ...
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Stat{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 3 || len(f[0]) != 1 {
		return Stat{}, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	pgrp, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil {
		return Stat{}, false
	}
	return Stat{State: f[0][0], PPID: ppid, PGRP: pgrp}, true
}

// PIDs lists the processes in /proc, except the caller itself.
func PIDs() []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid != self {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TailLines returns the lines of the log at path written since the last
// line containing startMarker (the harness writes one at every start),
// reading at most maxBytes from the end; each line is cut to maxLine bytes.
func TailLines(path, startMarker string, maxBytes int64, maxLine int) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(st.Size()-maxBytes, 0)
	buf := make([]byte, st.Size()-off)
	n, _ := f.ReadAt(buf, off)
	buf = buf[:n]
	if i := bytes.LastIndex(buf, []byte(startMarker)); i >= 0 {
		buf = buf[i:]
	} else if off > 0 {
		// Drop the partial first line.
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			buf = buf[i+1:]
		}
	}
	lines := strings.Split(strings.TrimRight(string(buf), "\n"), "\n")
	for i, l := range lines {
		if len(l) > maxLine {
			lines[i] = l[:maxLine] + " [...]"
		}
	}
	return lines, nil
}
