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

// Which zedagent topics a release publishes under <Persist>/status
// changed per release line, not at one version (pillar
// cmd/zedagent/zedagent.go, the Persistent field of the ControllerCert,
// EdgeNodeClusterConfig and EdgeNodeInfo publications, checked at every tag
// from 14.5.0-lts to 17.3.0):
//
//	release                           ControllerCert   EdgeNodeClusterConfig, EdgeNodeInfo
//	before 14.5.4, 15.x, 16.0.0,
//	16.1.0 ... 16.11.x                <Persist>/status <Persist>/status
//	14.5.4-rc1 and later 14.5.x       <Run>            <Persist>/status
//	16.0.1-rc1 and later 16.0.x       <Run>            <Run>
//	16.12.0 and later (17.0.0-lts)    <Run>            <Run>
//	0.0.0-<branch>-... snapshots      <Run>            <Run>
//
// A <Persist>/status copy is therefore live only on a release that writes
// it; on any other it is a leftover nothing removes.

// PersistentClusterTopics reports whether this release publishes
// EdgeNodeClusterConfig and EdgeNodeInfo under <Persist>/status. False
// when the version is unknown.
func (r Release) PersistentClusterTopics() bool {
	if !r.known || r.atLeast(16, 12, 0) || r.v == [3]int{} {
		return false
	}
	if r.v[0] == 16 && r.v[1] == 0 && r.v[2] >= 1 {
		return false // 16.0.1-rc1 and later 16.0.x (LTS backport)
	}
	return true
}

// PersistentControllerCert reports whether this release publishes the
// controller certificates under <Persist>/status. False when the version
// is unknown.
func (r Release) PersistentControllerCert() bool {
	if !r.PersistentClusterTopics() {
		return false
	}
	return !(r.v[0] == 14 && r.v[1] == 5 && r.v[2] >= 4) // 14.5.4-rc1 and later 14.5.x
}

func (r Release) atLeast(major, minor, patch int) bool {
	want := [3]int{major, minor, patch}
	for i := range r.v {
		if r.v[i] != want[i] {
			return r.v[i] > want[i]
		}
	}
	return true
}

func (r Release) String() string {
	if r.Version == "" {
		return "unknown EVE version"
	}
	return fmt.Sprintf("EVE %s", r.Version)
}
