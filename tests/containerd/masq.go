package containerd

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strings"
)

// The bridge plugin removes a pod's masquerade chain on DEL only when it can
// still read the pod's addresses from its network namespace: a DEL after the
// namespace is gone (a sandbox whose pause died, a containerd killed
// mid-test) frees the address but leaves the chain and its POSTROUTING jump
// in the host's nat table. Stop sweeps those that appeared while this
// harness ran, for its own network and pod CIDR only.

// masqRule is one POSTROUTING jump the bridge plugin made for a pod.
type masqRule struct {
	spec  string // the rule as iptables-save prints it, after "-A POSTROUTING "
	chain string
}

var masqJump = regexp.MustCompile(`^-A POSTROUTING -s (\S+)/32 .*-j (CNI-[0-9a-f]+)$`)

// masqRules lists the nat POSTROUTING jumps to per-pod CNI chains of
// network from addresses in cidr ("" and no error where iptables-save is
// missing: nothing of ours can be there then).
func masqRules(network string, cidr *net.IPNet) (map[string]masqRule, error) {
	save, err := exec.LookPath("iptables-save")
	if err != nil || cidr == nil {
		return nil, nil
	}
	out, err := exec.Command(save, "-t", "nat").Output()
	if err != nil {
		return nil, fmt.Errorf("containerd: iptables-save -t nat: %w", err)
	}
	name := fmt.Sprintf(`name: \"%s\"`, network)
	rules := map[string]masqRule{}
	for _, line := range strings.Split(string(out), "\n") {
		m := masqJump.FindStringSubmatch(line)
		if m == nil || !strings.Contains(line, name) {
			continue
		}
		if ip := net.ParseIP(m[1]); ip == nil || !cidr.Contains(ip) {
			continue
		}
		rules[m[2]] = masqRule{spec: strings.TrimPrefix(line, "-A POSTROUTING "), chain: m[2]}
	}
	return rules, nil
}

// sweepMasq deletes the jumps and chains in now that were not in before.
func sweepMasq(before, now map[string]masqRule) error {
	var b bytes.Buffer
	b.WriteString("*nat\n")
	n := 0
	for chain, r := range now {
		if _, ok := before[chain]; ok {
			continue
		}
		fmt.Fprintf(&b, "-D POSTROUTING %s\n-F %s\n-X %s\n", r.spec, chain, chain)
		n++
	}
	if n == 0 {
		return nil
	}
	b.WriteString("COMMIT\n")
	restore, err := exec.LookPath("iptables-restore")
	if err != nil {
		return fmt.Errorf("containerd: %d leftover masquerade chains, no iptables-restore: %w", n, err)
	}
	cmd := exec.Command(restore, "--noflush")
	cmd.Stdin = &b
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("containerd: removing %d leftover masquerade chains: %w: %s", n, err, bytes.TrimSpace(out))
	}
	return nil
}
