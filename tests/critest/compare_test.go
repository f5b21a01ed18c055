package critest

import (
	"strings"
	"testing"
)

// TestCompareExplainsOnlyWithEvidence: a difference counts as a guardrail
// only when the spec is listed and the refusal names the listed rule; a
// shim fix only when listed; anything else is an error.
func TestCompareExplainsOnlyWithEvidence(t *testing.T) {
	pass := Result{State: "passed"}
	refused := func(rule string) Result {
		return Result{State: "failed", Message: `rpc error: code = PermissionDenied desc = evelet guardrail "` + rule + `": pod x asks for it`}
	}
	privileged := "[k8s.io] Security Context bucket runtime should support Privileged is true"
	idem := "[k8s.io] Idempotence StopPodSandbox should not return an error if not found"
	other := "[k8s.io] Container runtime should support basic operations on container runtime should support starting container [Conformance]"
	direct := map[string]Result{privileged: pass, idem: {State: "failed", Message: "NotFound"}, other: pass}

	ok := compare(direct, map[string]Result{privileged: refused("no-privileged"), idem: pass, other: pass})
	if len(ok.errors) != 0 {
		t.Errorf("listed guardrail and shim fix gave errors: %v", ok.errors)
	}
	wrongRule := compare(direct, map[string]Result{privileged: refused("no-host-pid"), idem: pass, other: pass})
	if len(wrongRule.errors) != 1 || wrongRule.unexplained[0] != privileged {
		t.Errorf("a refusal by another rule than listed: errors %v", wrongRule.errors)
	}
	regression := compare(direct, map[string]Result{privileged: refused("no-privileged"), idem: pass, other: {State: "failed", Message: "boom"}})
	if len(regression.errors) != 1 || !strings.Contains(regression.errors[0], other) {
		t.Errorf("an unlisted difference: errors %v", regression.errors)
	}
	rro := "[k8s.io] Container Mount Readonly runtime should support readonly mounts should support recursive readonly mounts"
	skippedThere := compare(map[string]Result{rro: {State: "skipped"}}, map[string]Result{rro: refused("no-privileged")})
	if len(skippedThere.errors) != 0 {
		t.Errorf("skipped against containerd, refused by the listed rule through evelet: errors %v", skippedThere.errors)
	}
	if c := compare(map[string]Result{other: {State: "skipped"}}, map[string]Result{other: {State: "failed"}}); len(c.errors) != 1 {
		t.Errorf("skipped against containerd, failing through evelet unexplained: errors %v", c.errors)
	}
	notFixed := compare(map[string]Result{other: {State: "failed"}}, map[string]Result{other: pass})
	if len(notFixed.errors) != 1 {
		t.Errorf("an unexplained improvement: errors %v", notFixed.errors)
	}
}
