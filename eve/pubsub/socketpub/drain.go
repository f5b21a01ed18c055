package socketpub

import "github.com/lf-edge/evelet/eve/pubsub"

// DrainStatus publishes NodeDrainStatus in zedkube's place: key "global" in
// <Run>/zedkube/NodeDrainStatus/global.json and on
// <Run>/zedkube/NodeDrainStatus.sock, where baseosmgr, nodeagent, zedagent
// and diag subscribe (non-persistent) to learn how a drain they asked for is
// going. zedkube publishes it only on EVE-k builds; there it owns the socket
// and OpenDrainStatus fails rather than take it over.
type DrainStatus struct {
	pub *Publication
}

// OpenDrainStatus starts serving the topic. A status published by an
// earlier run is served again until Set replaces it.
func OpenDrainStatus(root pubsub.Root, opts Options) (*DrainStatus, error) {
	p, err := Open(root, pubsub.AgentZedKube, pubsub.TopicNodeDrainStatus, opts)
	if err != nil {
		return nil, err
	}
	return &DrainStatus{pub: p}, nil
}

// Set publishes s (written to the file, then sent to subscribers).
func (d *DrainStatus) Set(s pubsub.NodeDrainStatus) error {
	return d.pub.Publish(pubsub.KeyGlobal, s)
}

// Publication gives access to the underlying topic (restart counter, paths).
func (d *DrainStatus) Publication() *Publication { return d.pub }

// Close stops serving; the file stays for the next run.
func (d *DrainStatus) Close() error { return d.pub.Close() }
