package main

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
)

// TestDoctorTakesTheAgentsCommandLine: every flag the agent has is
// accepted by evelet doctor (docs/doctor.md: the agent's whole command line
// can be given to it). Before, doctor kept its own copy of the agent's
// flags, and the agent's later --node-dns, --node-dns-address and
// --cluster-domain made doctor exit 2 ("flag provided but not defined").
func TestDoctorTakesTheAgentsCommandLine(t *testing.T) {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	newAgentFlags(fs)
	dir := t.TempDir()
	join := filepath.Join(dir, "join.yaml")
	if err := os.WriteFile(join, []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The agent's flags, each at its default, then a device to look at
	// that answers fast: no containerd, no cluster.
	var args []string
	fs.VisitAll(func(f *flag.Flag) { args = append(args, "--"+f.Name+"="+f.DefValue) })
	args = append(args, "--state-dir="+dir, "--join-file="+join, "--containerd=unix://"+filepath.Join(dir, "none.sock"),
		"--no-vm-pods", "--timeout=100ms", "-o=json")
	stdout := os.Stdout
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	os.Stdout = devnull
	code := runDoctor(args)
	os.Stdout = stdout
	if code == 2 {
		t.Fatalf("evelet doctor refused the agent's flags (exit 2): %v", args)
	}
}
