// Command testrun runs `go test -json` and turns its event stream into a
// short log, failing the run on any skip whose reason is not on the list of
// skips that truly cannot be helped on the project's machines
// (tests/allowed-skips.txt). `make test` (and so CI) runs every package
// through it: a test that quietly skips because a prerequisite went missing
// fails the run instead of passing unseen.
//
// Usage: testrun [-allowed FILE] -- go test -json [flags] packages...
//
// The log keeps what a person reads after a run: each package's result
// line, the whole output of a failed test, and every skip with its reason.
// Output of passing tests is dropped (it is in the -json stream if needed:
// -raw FILE writes the stream too).
//
// Written here rather than taken from gotestsum: that tool is not served on
// this project's module proxy list, and the rule (skips are failures unless
// listed) is a few lines over test2json's documented event format.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"time"
)

// event is one line of `go test -json` (cmd/test2json's TestEvent).
type event struct {
	Time    time.Time
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

// allowance is one line of the allowed-skips file: a regular expression a
// skip's message must match, and why such a skip cannot be helped.
type allowance struct {
	re  *regexp.Regexp
	why string
}

func main() {
	allowedFile := flag.String("allowed", "tests/allowed-skips.txt", "file of allowed skip reasons")
	raw := flag.String("raw", "", "also write the raw -json stream to this file")
	flag.Parse()
	args := flag.Args()
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: testrun [-allowed FILE] [-raw FILE] -- go test -json ...")
		os.Exit(2)
	}
	allowed, err := loadAllowed(*allowedFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testrun:", err)
		os.Exit(2)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testrun:", err)
		os.Exit(2)
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "testrun:", err)
		os.Exit(2)
	}
	var in io.Reader = out
	if *raw != "" {
		f, err := os.Create(*raw)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testrun:", err)
			os.Exit(2)
		}
		defer f.Close()
		in = io.TeeReader(out, f)
	}
	r := newReport(allowed, os.Stdout)
	scanErr := r.read(in)
	waitErr := cmd.Wait()
	os.Exit(r.finish(scanErr, waitErr))
}

func loadAllowed(path string) ([]allowance, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []allowance
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		pat, why, ok := strings.Cut(line, "\t")
		if !ok || strings.TrimSpace(why) == "" {
			return nil, fmt.Errorf("%s:%d: want <regexp> TAB <why it cannot be helped>", path, i+1)
		}
		re, err := regexp.Compile(strings.TrimSpace(pat))
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, i+1, err)
		}
		out = append(out, allowance{re: re, why: strings.TrimSpace(why)})
	}
	return out, nil
}

var logLine = regexp.MustCompile(`^[\w.-]+\.go:\d+: `)

type report struct {
	allowed []allowance
	w       io.Writer
	// output of each running test, keyed by package and test name, kept
	// until the test ends.
	buf                      map[string]*strings.Builder
	fails, badSkips, okSkips []string
	sawEnd                   map[string]bool // package -> saw its final pass/fail/skip
}

func newReport(allowed []allowance, w io.Writer) *report {
	return &report{allowed: allowed, w: w, buf: map[string]*strings.Builder{}, sawEnd: map[string]bool{}}
}

func (r *report) read(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			// go test prints build errors and the like as plain text.
			fmt.Fprintln(r.w, string(line))
			continue
		}
		r.handle(e)
	}
	return sc.Err()
}

func (r *report) handle(e event) {
	key := e.Package + " " + e.Test
	if e.Test == "" {
		switch e.Action {
		case "output":
			// package-level lines: "ok  pkg 1.2s", "FAIL", "PASS", panics
			if t := strings.TrimRight(e.Output, "\n"); t != "PASS" && !strings.HasPrefix(t, "=== ") {
				fmt.Fprintln(r.w, t)
			}
		case "pass", "fail", "skip":
			r.sawEnd[e.Package] = true
			if e.Action == "fail" {
				r.fails = append(r.fails, e.Package)
			}
		case "start":
			r.sawEnd[e.Package] = false
		}
		return
	}
	switch e.Action {
	case "run":
		r.buf[key] = &strings.Builder{}
	case "output":
		b := r.buf[key]
		if b == nil {
			b = &strings.Builder{}
			r.buf[key] = b
		}
		b.WriteString(e.Output)
	case "fail":
		fmt.Fprintf(r.w, "--- FAIL: %s %s (%.1fs)\n%s", e.Package, e.Test, e.Elapsed, r.output(key))
		r.fails = append(r.fails, e.Package+" "+e.Test)
		delete(r.buf, key)
	case "pass":
		delete(r.buf, key)
	case "skip":
		msg := skipMessage(r.output(key))
		delete(r.buf, key)
		name := e.Package + " " + e.Test
		if why, ok := r.allow(msg); ok {
			r.okSkips = append(r.okSkips, fmt.Sprintf("%s: %s (allowed: %s)", name, msg, why))
			fmt.Fprintf(r.w, "--- SKIP (allowed): %s: %s\n", name, msg)
		} else {
			r.badSkips = append(r.badSkips, fmt.Sprintf("%s: %s", name, msg))
			fmt.Fprintf(r.w, "--- SKIP (NOT ALLOWED): %s: %s\n", name, msg)
		}
	}
}

func (r *report) output(key string) string {
	if b := r.buf[key]; b != nil {
		return b.String()
	}
	return ""
}

// skipMessage takes the test's output (as test2json framed it) and keeps
// the lines the test itself logged: the reason it gave t.Skip.
func skipMessage(out string) string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		lines = append(lines, t)
	}
	if len(lines) == 0 {
		return "(no reason given)"
	}
	// The reason is what t.Skip logged last ("file.go:NN: reason", which
	// may go on over several lines).
	for i := len(lines) - 1; i >= 0; i-- {
		if logLine.MatchString(lines[i]) {
			return strings.Join(lines[i:], " ")
		}
	}
	return lines[len(lines)-1]
}

func (r *report) allow(msg string) (string, bool) {
	for _, a := range r.allowed {
		if a.re.MatchString(msg) {
			return a.why, true
		}
	}
	return "", false
}

// finish prints the summary and returns the exit code: 0 only if go test
// passed, every package reported an end, and every skip was allowed.
func (r *report) finish(scanErr, waitErr error) int {
	code := 0
	var incomplete []string
	for p, ended := range r.sawEnd {
		if !ended {
			incomplete = append(incomplete, p)
		}
	}
	sort.Strings(incomplete)
	if len(r.okSkips) > 0 {
		fmt.Fprintf(r.w, "\n%d allowed skips:\n", len(r.okSkips))
		for _, s := range r.okSkips {
			fmt.Fprintln(r.w, "  "+s)
		}
	}
	if len(r.badSkips) > 0 {
		fmt.Fprintf(r.w, "\nFAIL: %d tests skipped for a reason not in the allowed list (tests/allowed-skips.txt); on the project's machines they must run:\n", len(r.badSkips))
		for _, s := range r.badSkips {
			fmt.Fprintln(r.w, "  "+s)
		}
		code = 1
	}
	if len(incomplete) > 0 {
		fmt.Fprintf(r.w, "\nFAIL: packages that never reported a result: %s\n", strings.Join(incomplete, ", "))
		code = 1
	}
	if len(r.fails) > 0 {
		fmt.Fprintf(r.w, "\nFAIL: %d failed: %s\n", len(r.fails), strings.Join(r.fails, ", "))
		code = 1
	}
	if scanErr != nil {
		fmt.Fprintln(r.w, "testrun: reading go test's output:", scanErr)
		code = 1
	}
	if waitErr != nil {
		var ee *exec.ExitError
		if !errors.As(waitErr, &ee) {
			fmt.Fprintln(r.w, "testrun:", waitErr)
		}
		code = 1
	}
	return code
}
