package eveni_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/lf-edge/evelet/cni/eveni"
)

// TestMain removes eve-ni's nftables table once every test removed its
// attachments, as the agent does when the node leaves: the host's ruleset
// is left as the tests found it.
func TestMain(m *testing.M) {
	code := m.Run()
	if os.Geteuid() == 0 {
		if err := eveni.RemoveGuardTableIfEmpty(); err != nil {
			fmt.Fprintln(os.Stderr, "eve-ni table:", err)
			code = 1
		}
	}
	os.Exit(code)
}
