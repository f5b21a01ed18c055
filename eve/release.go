package eve

import (
	"fmt"
	"regexp"
	"strconv"

	"github.com/lf-edge/evelet/eve/pubsub"
)

// Release is the running EVE version, as EVE records it: <Run>/eve-release
// (pillar types.EveVersionFile, read by agentlog.EveVersion), else the
// current partition's ZbootStatus.ShortVersion (which baseosmgr reads from
// the same file, pillar zboot.GetShortVersion). Versions look like
// "16.12.0-kvm-amd64", "14.5.1-lts-kvm-amd64"; builds from a branch are
// "0.0.0-<branch>-<sha>-..." (EVE's Makefile: EVE_SNAPSHOT_VERSION).
type Release struct {
	Version string // as read; "" when EVE did not say
	known   bool
	v       [3]int
}

var releaseRE = regexp.MustCompile(`^(\d+)\.(\d+)\.(\d+)`)

// ParseRelease reads a version string; anything that does not start with
// major.minor.patch is kept but counts as unknown.
func ParseRelease(s string) Release {
	r := Release{Version: s}
	m := releaseRE.FindStringSubmatch(s)
	if m == nil {
		return r
	}
	for i := range r.v {
		n, err := strconv.Atoi(m[i+1])
		if err != nil {
			return r
		}
		r.v[i] = n
	}
	r.known = true
	return r
}

// ReleaseOf is the running EVE version as the snapshot shows it.
func ReleaseOf(s pubsub.Snapshot) Release {
	if s.EVERelease != "" {
		return ParseRelease(s.EVERelease)
	}
	return ParseRelease(s.RunningVersion())
}

// Known reports whether the version could be read. A snapshot build
// (0.0.0-...) is known: it is built from a branch, taken as current.
func (r Release) Known() bool { return r.known }

// nonPersistentSince is the first EVE release in which zedagent publishes
// ControllerCert, EdgeNodeClusterConfig and EdgeNodeInfo under /run only
// (pillar cmd/zedagent/zedagent.go; lf-edge/eve commits 00480f4d8 and
// 9089e094c, first tagged in 16.12.0).
var nonPersistentSince = [3]int{16, 12, 0}

// PersistentTopics reports whether this EVE publishes ControllerCert,
// EdgeNodeClusterConfig and EdgeNodeInfo under <Persist>/status (releases
// before 16.12.0). False for 16.12.0 and later, for snapshot builds
// (0.0.0-...) and when the version is unknown.
func (r Release) PersistentTopics() bool {
	if !r.known || r.v == [3]int{0, 0, 0} {
		return false
	}
	for i := range r.v {
		if r.v[i] != nonPersistentSince[i] {
			return r.v[i] < nonPersistentSince[i]
		}
	}
	return false
}

func (r Release) String() string {
	if r.Version == "" {
		return "unknown EVE version"
	}
	return fmt.Sprintf("EVE %s", r.Version)
}
