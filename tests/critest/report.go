package critest

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
)

// Result is one critest spec's outcome.
type Result struct {
	State   string // passed, skipped, failed, panicked, timedout, ...
	Message string // the failure message, if any
}

// Counts of one run by state.
type Counts struct{ Passed, Skipped, Failed int }

func (c Counts) String() string {
	return fmt.Sprintf("%d passed, %d skipped, %d failed", c.Passed, c.Skipped, c.Failed)
}

// ReadReport reads a ginkgo JSON report (critest -ginkgo.json-report) and
// returns every It spec by its full name.
func ReadReport(path string) (map[string]Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	// The subset of ginkgo's types.Report that is needed here.
	var reports []struct {
		SpecReports []struct {
			ContainerHierarchyTexts []string
			LeafNodeText            string
			LeafNodeType            string
			State                   string
			Failure                 struct{ Message string }
		}
	}
	if err := json.Unmarshal(b, &reports); err != nil {
		return nil, fmt.Errorf("critest report %s: %w", path, err)
	}
	out := map[string]Result{}
	for _, r := range reports {
		for _, s := range r.SpecReports {
			if s.LeafNodeType != "It" {
				continue
			}
			name := strings.Join(append(append([]string{}, s.ContainerHierarchyTexts...), s.LeafNodeText), " ")
			out[name] = Result{State: s.State, Message: s.Failure.Message}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("critest report %s has no specs", path)
	}
	return out, nil
}

// Count tallies results; anything not passed or skipped is a failure.
func Count(rs map[string]Result) Counts {
	var c Counts
	for _, r := range rs {
		switch r.State {
		case "passed":
			c.Passed++
		case "skipped", "pending":
			c.Skipped++
		default:
			c.Failed++
		}
	}
	return c
}

// Names returns the spec names in order.
func Names(rs map[string]Result) []string {
	n := make([]string, 0, len(rs))
	for k := range rs {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// passed is true for a spec that passed.
func (r Result) passed() bool { return r.State == "passed" }
