package socketpub

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/lf-edge/evelet/eve/pubsub"
)

// DrainStatus publishes NodeDrainStatus in zedkube's place: key "global" in
// <Run>/zedkube/NodeDrainStatus/global.json and on
// <Run>/zedkube/NodeDrainStatus.sock, where baseosmgr, nodeagent, zedagent
// and diag subscribe (non-persistent) to learn how a drain they asked for is
// going.
//
// zedkube publishes this topic on EVE-k builds, and a pillar publisher that
// finds its socket answered by another process exits fatally (pillar
// pubsub/socketdriver/driver.go, Publisher). So the socket is opened only
// once the build is known not to be EVE-k (ZedkubeBuild), never on a guess:
// until then Set fails with ErrBuildUnknown, and on an EVE-k build with
// ErrZedkubeBuild. A publication already open is closed as soon as
// zedkube's evidence appears.
type DrainStatus struct {
	root pubsub.Root
	opts Options

	mu  sync.Mutex
	pub *Publication
}

// Errors Set returns instead of publishing.
var (
	// ErrZedkubeBuild: this is an EVE-k build; zedkube owns the topic.
	ErrZedkubeBuild = errors.New("EVE-k build: zedkube owns NodeDrainStatus; evelet does not publish it")
	// ErrBuildUnknown: the build flavour is not known yet; nothing is
	// published until it is.
	ErrBuildUnknown = errors.New("EVE build flavour unknown (no eve-hv-type, no HV in eve-release): NodeDrainStatus not published yet")
)

// OpenDrainStatus prepares the topic; nothing is opened before the first
// Set on a build known not to be EVE-k. A status published by an earlier
// run is served again once the socket opens, until Set replaces it.
func OpenDrainStatus(root pubsub.Root, opts Options) (*DrainStatus, error) {
	if err := checkName("agent", pubsub.AgentZedKube); err != nil {
		return nil, err
	}
	return &DrainStatus{root: root, opts: opts}, nil
}

// Set publishes s (written to the file, then sent to subscribers), or
// returns ErrZedkubeBuild / ErrBuildUnknown (wrapped, with the evidence).
func (d *DrainStatus) Set(s pubsub.NodeDrainStatus) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	kube, known, why := ZedkubeBuild(d.root)
	switch {
	case kube:
		if d.pub != nil {
			d.pub.Close()
			d.pub = nil
		}
		return fmt.Errorf("%w (%s)", ErrZedkubeBuild, why)
	case !known:
		return ErrBuildUnknown
	}
	if d.pub == nil {
		p, err := Open(d.root, pubsub.AgentZedKube, pubsub.TopicNodeDrainStatus, d.opts)
		if err != nil {
			return err
		}
		d.pub = p
	}
	return d.pub.Publish(pubsub.KeyGlobal, s)
}

// Publication gives access to the underlying topic (restart counter,
// paths); nil while nothing is published.
func (d *DrainStatus) Publication() *Publication {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pub
}

// Close stops serving; the file stays for the next run.
func (d *DrainStatus) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pub == nil {
		return nil
	}
	err := d.pub.Close()
	d.pub = nil
	return err
}

// ZedkubeBuild tells whether zedkube runs on this EVE build (kube), and
// whether that is known. The evidence, strongest first:
//   - a topic of zedkube's other than NodeDrainStatus under <Run>/zedkube
//     (zedkube itself is there, whatever the files below say): kube;
//   - <Run>/eve-hv-type ("k" is EVE-k; pillar base.IsHVTypeKube reads this
//     file, which EVE's init writes before any pillar agent starts);
//   - the HV part of <Run>/eve-release (<version>-<HV>-<arch>, as pillar
//     base.versionToHVType reads it);
//   - NodeAgentStatus.HVTypeKube true.
//
// Both files exist from early boot on, so the answer does not depend on
// whether zedkube or nodeagent has started yet.
func ZedkubeBuild(root pubsub.Root) (kube, known bool, why string) {
	if ents, err := os.ReadDir(root.TopicDir(pubsub.AgentZedKube, "")); err == nil {
		for _, e := range ents {
			n := e.Name()
			if n != pubsub.TopicNodeDrainStatus && n != pubsub.TopicNodeDrainStatus+".sock" {
				return true, true, "zedkube publishes " + root.TopicDir(pubsub.AgentZedKube, n)
			}
		}
	}
	if b, err := os.ReadFile(root.EVEHVType()); err == nil {
		if hv := strings.TrimSpace(string(b)); hv != "" {
			return hv == kubeHV, true, root.EVEHVType() + " says " + hv
		}
	}
	if b, err := os.ReadFile(root.EVERelease()); err == nil {
		parts := strings.Split(strings.TrimSpace(string(b)), "-")
		if len(parts) >= 3 {
			hv := parts[len(parts)-2]
			return hv == kubeHV, true, root.EVERelease() + " names HV " + hv
		}
	}
	if na, ok, _ := pubsub.Read[pubsub.NodeAgentStatus](root.NodeAgentStatus()); ok && na.HVTypeKube {
		return true, true, "NodeAgentStatus.HVTypeKube"
	}
	return false, false, ""
}

// kubeHV is EVE-k's hypervisor name (pillar base.KubevirtHypervisorName).
const kubeHV = "k"
