package e2e

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/lf-edge/evelet/doctor"
)

// TestDoctorOnJoinedDevice runs `evelet doctor` with a running agent's own
// command line against its real containerd, apiserver and credentials: a
// joined device whose serving CSR was approved passes every check (KVM may
// only warn, where the host has none). Then one prerequisite goes for
// real, the containerd socket, and doctor exits 1 naming it with its fix.
func TestDoctorOnJoinedDevice(t *testing.T) {
	needEnv(t)
	node := "edge-doctor"
	deleteNodeAtEnd(t, node)
	d := newDevice(t, joinFor(node, newToken(t)))
	d.start()
	waitNodeReady(t, node, 3*time.Minute)
	// The control plane's approver signs the kubelet's serving CSR.
	serving := filepath.Join(d.credDir(), "pki", "kubelet-server-current.pem")
	waitFor(t, time.Minute, "the kubelet's serving certificate", func() (bool, error) {
		_, err := os.Stat(serving)
		return err == nil, err
	})

	agentFlags := []string{"--state-dir=" + d.stateDir(), "--run-dir=" + d.runDir(), "--containerd=" + env.ctrd.Endpoint(),
		"--log-level=debug", "--drain-timeout=1m", "--join-file=" + d.joinPath}
	rs, code := runDoctor(t, agentFlags...)
	if code != 0 {
		t.Errorf("doctor exited %d on a healthy device", code)
	}
	for _, r := range rs {
		if r.Status == doctor.OK || (r.Check == "kvm" && r.Status == doctor.Warn) {
			t.Logf("%s %s: %s", r.Status, r.Check, r.Found)
			continue
		}
		t.Errorf("%s %s: %s (fix: %s)", r.Status, r.Check, r.Found, r.Fix)
	}

	rs, code = runDoctor(t, append(agentFlags, "--containerd=unix://"+filepath.Join(d.dir, "no-containerd.sock"))...)
	if code != 1 {
		t.Errorf("doctor exited %d without containerd, want 1", code)
	}
	for _, r := range rs {
		if r.Check == "containerd" && (r.Status != doctor.Fail || r.Fix == "") {
			t.Errorf("containerd check without a socket: %+v", r)
		}
	}
}

func runDoctor(t *testing.T, args ...string) ([]doctor.Result, int) {
	t.Helper()
	cmd := exec.Command(env.evelet, append([]string{"doctor", "-o", "json"}, args...)...)
	out, err := cmd.Output()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatalf("evelet doctor: %v", err)
	}
	var rs []doctor.Result
	if err := json.Unmarshal(out, &rs); err != nil {
		t.Fatalf("evelet doctor -o json: %v\n%s", err, out)
	}
	return rs, code
}
