package agent

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/policy"
)

// TestConfigItemsApplyWhenJoinFails (issue 16): the owner tightens the
// guardrails in the same config in which the join stops resolving (a
// rotated controller certificate, one bad pubsub file). The Source still
// delivers the items; the CRI policy and the kubelet's policy file follow
// them, and the node keeps running. Before, the agent dropped the items
// with the error and kept the previous, laxer policy.
func TestConfigItemsApplyWhenJoinFails(t *testing.T) {
	h := newHarness(t, nil, nil)
	h.start()
	sink := &policySink{}
	defer h.a.registerCRI(sink)()
	h.send(intent.Update{Join: joinA("abcdef.0123456789abcdef", pinA), ConfigItems: map[string]string{policy.KeyAllowPrivileged: "true"}})
	h.waitRunning()
	h.eventually("the lax policy installed", func() bool { p, ok := sink.last(); return ok && p.AllowPrivileged })

	h.send(intent.Update{Err: errors.New("cipher context: controller certificate not published"), ConfigItems: map[string]string{}})
	h.eventually("the owner's tighter policy installed", func() bool { p, ok := sink.last(); return ok && !p.AllowPrivileged })
	h.eventually("the kubelet's policy file follows", func() bool {
		p, err := readPolicyFile(h.a.cfg.PolicyFile())
		return err == nil && !p.AllowPrivileged
	})
	h.eventually("the join error shown, the node still Running", func() bool {
		st := h.a.Status()
		return st.Phase == PhaseRunning && strings.Contains(st.LastError, "controller certificate")
	})

	// A Source that cannot read the items either (nil) leaves them as they are.
	h.send(intent.Update{Err: errors.New("checkpoint truncated")})
	h.eventually("error shown", func() bool { return h.a.Status().LastError == "checkpoint truncated" })
	if p, _ := sink.last(); p.AllowPrivileged {
		t.Error("unknown items loosened the policy")
	}
}

// TestCRIRestartNeverInstallsAnOlderPolicy (issue 16): a CRI server
// (re)start registers and installs the policy while the owner's items
// change. The sink holds the first install (the one the restart makes)
// until the concurrent config change is done, or at most a deadline; the
// policy that ends up installed must be the newer one. Before, the restart
// computed the policy from the old items, the change installed the new one,
// and the restart's old one landed last.
func TestCRIRestartNeverInstallsAnOlderPolicy(t *testing.T) {
	h := newHarness(t, nil, nil)
	h.a.setConfigItems(map[string]string{policy.KeyAllowPrivileged: "true"})
	changed := make(chan struct{})
	sink := &policySink{}
	sink.hold = func() {
		select {
		case <-changed:
		case <-time.After(2 * time.Second): // the fixed agent holds the change back meanwhile
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	sink.entered = make(chan struct{})
	go func() { defer wg.Done(); h.a.registerCRI(sink) }()
	<-sink.entered // the restart is installing the lax policy now
	go func() { h.a.setConfigItems(map[string]string{}); close(changed) }()
	wg.Wait()
	<-changed
	if p, ok := sink.last(); !ok || p.AllowPrivileged {
		t.Fatalf("an older policy was installed after the newer one: %+v", sink.all())
	}
}

// policySink records the policies installed on a fake CRI server; hold,
// if set, runs inside the first SetPolicy before it takes effect.
type policySink struct {
	mu       sync.Mutex
	got      []policy.Policy
	hold     func()
	entered  chan struct{}
	calledAt int
}

func (s *policySink) SetPolicy(p policy.Policy) {
	s.mu.Lock()
	s.calledAt++
	first := s.calledAt == 1
	s.mu.Unlock()
	if first && s.hold != nil {
		close(s.entered)
		s.hold()
	}
	s.mu.Lock()
	s.got = append(s.got, p)
	s.mu.Unlock()
}

func (s *policySink) last() (policy.Policy, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.got) == 0 {
		return policy.Policy{}, false
	}
	return s.got[len(s.got)-1], true
}

func (s *policySink) all() []bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []bool
	for _, p := range s.got {
		out = append(out, p.AllowPrivileged)
	}
	return out
}

func readPolicyFile(path string) (policy.Policy, error) {
	var p policy.Policy
	b, err := os.ReadFile(path)
	if err != nil {
		return p, err
	}
	return p, json.Unmarshal(b, &p)
}

// statusOnly answers CRI Status with a verbose config, as containerd does.
type statusOnly struct {
	runtimeapi.RuntimeServiceClient
	config string
}

func (s statusOnly) Status(context.Context, *runtimeapi.StatusRequest, ...grpc.CallOption) (*runtimeapi.StatusResponse, error) {
	return &runtimeapi.StatusResponse{Info: map[string]string{"config": s.config}}, nil
}

// TestRuntimeDirsProtected: the directories containerd says it uses,
// wherever they are, are protected in the CRI policy and the kubelet's
// policy file, even under a prefix the owner allowed. Before, only the
// socket's directory and the stock paths were.
func TestRuntimeDirsProtected(t *testing.T) {
	h := newHarness(t, nil, nil)
	h.a.setConfigItems(map[string]string{policy.KeyAllowedHostPaths: "/srv"})
	h.a.learnRuntimeDirs(context.Background(), statusOnly{config: `{"containerdRootDir": "/srv/ctrd/root", "stateDir": "/srv/ctrd/state/io.containerd.grpc.v1.cri"}`})
	sink := &policySink{}
	defer h.a.registerCRI(sink)()
	p, ok := sink.last()
	if !ok {
		t.Fatal("no policy installed")
	}
	for _, path := range []string{"/srv/ctrd/root/io.containerd.content.v1.content", "/srv/ctrd/state", "/srv/ctrd"} {
		if _, err := p.JudgeHostPath("pod t", "mounts", path); err == nil || !strings.Contains(err.Error(), "as containerd reports it") {
			t.Errorf("CRI policy: host path %s: %v, want refused as containerd's", path, err)
		}
	}
	if _, err := p.JudgeHostPath("pod t", "mounts", "/srv/data"); err != nil {
		t.Errorf("CRI policy: /srv/data, allowed by the owner: %v", err)
	}
	fp, err := readPolicyFile(h.a.cfg.PolicyFile())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fp.JudgeHostPath("pod t", "mounts", "/srv/ctrd/root"); err == nil {
		t.Error("kubelet policy file: containerd's root not protected")
	}

	// containerd not answering keeps what it said before.
	h.a.learnRuntimeDirs(context.Background(), statusOnly{config: "{"})
	if _, err := h.a.policy().JudgeHostPath("pod t", "mounts", "/srv/ctrd/root"); err == nil {
		t.Error("a failed question dropped the protection")
	}
}
