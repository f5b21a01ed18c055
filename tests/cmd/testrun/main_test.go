package main

import (
	"errors"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// A stream as `go test -json` writes it (cmd/test2json's documented format),
// written by hand so that the checker is tested against the format, not
// against its own output.
const stream = `{"Action":"start","Package":"p"}
{"Action":"run","Package":"p","Test":"TestOK"}
{"Action":"output","Package":"p","Test":"TestOK","Output":"=== RUN   TestOK\n"}
{"Action":"output","Package":"p","Test":"TestOK","Output":"    a_test.go:3: chatter\n"}
{"Action":"pass","Package":"p","Test":"TestOK","Elapsed":0}
{"Action":"run","Package":"p","Test":"TestKVM"}
{"Action":"output","Package":"p","Test":"TestKVM","Output":"=== RUN   TestKVM\n"}
{"Action":"output","Package":"p","Test":"TestKVM","Output":"    a_test.go:9: needs /dev/kvm: not here\n"}
{"Action":"output","Package":"p","Test":"TestKVM","Output":"--- SKIP: TestKVM (0.00s)\n"}
{"Action":"skip","Package":"p","Test":"TestKVM","Elapsed":0}
{"Action":"run","Package":"p","Test":"TestRoot"}
{"Action":"output","Package":"p","Test":"TestRoot","Output":"=== RUN   TestRoot\n"}
{"Action":"output","Package":"p","Test":"TestRoot","Output":"    a_test.go:12: needs root\n"}
{"Action":"output","Package":"p","Test":"TestRoot","Output":"        (run make test)\n"}
{"Action":"output","Package":"p","Test":"TestRoot","Output":"--- SKIP: TestRoot (0.00s)\n"}
{"Action":"skip","Package":"p","Test":"TestRoot","Elapsed":0}
{"Action":"output","Package":"p","Output":"ok  \tp\t0.01s\n"}
{"Action":"pass","Package":"p","Elapsed":0.01}
`

func allowedKVM() []allowance {
	return []allowance{{re: regexp.MustCompile(`needs /dev/kvm`), why: "no KVM"}}
}

func TestSkipNotAllowedFailsTheRun(t *testing.T) {
	var out strings.Builder
	r := newReport(allowedKVM(), &out)
	if err := r.read(strings.NewReader(stream)); err != nil {
		t.Fatal(err)
	}
	if code := r.finish(nil, nil); code != 1 {
		t.Fatalf("exit code %d, want 1 for a skip that is not allowed\n%s", code, out.String())
	}
	log := out.String()
	for _, want := range []string{
		"--- SKIP (allowed): p TestKVM: a_test.go:9: needs /dev/kvm: not here",
		"--- SKIP (NOT ALLOWED): p TestRoot: a_test.go:12: needs root (run make test)",
		"ok  \tp\t0.01s",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "chatter") {
		t.Errorf("a passing test's output was printed:\n%s", log)
	}
}

func TestAllowedSkipsPass(t *testing.T) {
	var out strings.Builder
	r := newReport(append(allowedKVM(), allowance{re: regexp.MustCompile(`needs root`), why: "x"}), &out)
	if err := r.read(strings.NewReader(stream)); err != nil {
		t.Fatal(err)
	}
	if code := r.finish(nil, nil); code != 0 {
		t.Fatalf("exit code %d, want 0\n%s", code, out.String())
	}
}

func TestFailurePrintsTheTestsOutput(t *testing.T) {
	s := `{"Action":"start","Package":"p"}
{"Action":"run","Package":"p","Test":"TestBad"}
{"Action":"output","Package":"p","Test":"TestBad","Output":"    a_test.go:5: got 1, want 2\n"}
{"Action":"fail","Package":"p","Test":"TestBad","Elapsed":0.5}
{"Action":"output","Package":"p","Output":"FAIL\tp\t0.6s\n"}
{"Action":"fail","Package":"p","Elapsed":0.6}
`
	var out strings.Builder
	r := newReport(nil, &out)
	if err := r.read(strings.NewReader(s)); err != nil {
		t.Fatal(err)
	}
	if code := r.finish(nil, nil); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	if !strings.Contains(out.String(), "got 1, want 2") {
		t.Errorf("the failed test's output is missing:\n%s", out.String())
	}
}

// A package whose test binary died (no final event) or a go test that
// exited non-zero fails the run even if no event said so.
func TestIncompleteOrNonZeroFails(t *testing.T) {
	var out strings.Builder
	r := newReport(nil, &out)
	if err := r.read(strings.NewReader(`{"Action":"start","Package":"p"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	if code := r.finish(nil, nil); code != 1 || !strings.Contains(out.String(), "never reported") {
		t.Fatalf("exit code %d\n%s", code, out.String())
	}
	r = newReport(nil, &out)
	if code := r.finish(nil, &exec.ExitError{}); code != 1 {
		t.Fatalf("exit code %d for a failed go test", code)
	}
	if code := newReport(nil, &out).finish(errors.New("read"), nil); code != 1 {
		t.Fatal("a read error passed")
	}
}

// The repository's allowed list parses, and does not allow the commonest
// quiet skip: a missing prerequisite that make test installs.
func TestRepositoryAllowedList(t *testing.T) {
	a, err := loadAllowed("../../allowed-skips.txt")
	if err != nil {
		t.Fatal(err)
	}
	r := newReport(a, &strings.Builder{})
	for _, msg := range []string{"x_test.go:1: needs root", "x_test.go:1: containerd is not installed (hack/install-prereqs.sh installs it)"} {
		if _, ok := r.allow(msg); ok {
			t.Errorf("%q is allowed", msg)
		}
	}
}
