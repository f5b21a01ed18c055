package evesim

import "github.com/lf-edge/evelet/eve/pubsub"

// partitions are EVE's two root file system partitions, IMGA and IMGB, the
// way baseosmgr reports them in ZbootStatus (pillar types/zboottypes.go
// and cmd/baseosmgr): the running one, and the other one that an update
// is written to ("updating"). GRUB boots an updating partition next
// ("inprogress" while the new version is tested); after the test window it
// is "active" and the old one "unused"; a fallback boots the old one again.
type partitions struct {
	onB  bool      // the device runs from IMGB
	a, b partition // what each partition holds
	init bool      // a and b were set up (zero value: fresh device on IMGA)
}

type partition struct {
	state   string
	version string
	tested  bool
}

func (p *partitions) setup() {
	if !p.init {
		p.init = true
		p.a = partition{state: pubsub.PartitionStateActive, tested: true}
		p.b = partition{state: pubsub.PartitionStateUnused}
	}
}

func (p *partitions) current() *partition {
	p.setup()
	if p.onB {
		return &p.b
	}
	return &p.a
}

func (p *partitions) other() *partition {
	p.setup()
	if p.onB {
		return &p.a
	}
	return &p.b
}

func (p *partitions) currentLabel() string {
	if p.onB {
		return pubsub.PartitionIMGB
	}
	return pubsub.PartitionIMGA
}

// reboot boots into version. Another version than the running one comes
// from the other partition, which becomes current and "inprogress" until
// CompleteTest; the old one stays "active" as the fallback. Booting the
// version of the other partition while the current one is still under test
// is a fallback: the failed partition stays "inprogress", as baseosmgr
// leaves it (handlebaseos.go: a failed update with the same version). The
// same version again is a plain reboot, or a fallback before the new
// version ever came up: an update waiting on the other partition is then
// left there "inprogress", failed.
func (p *partitions) reboot(running, version string) {
	cur, oth := p.current(), p.other()
	cur.version = running
	switch {
	case version == running:
		if oth.state == pubsub.PartitionStateUpdating {
			oth.state = pubsub.PartitionStateInProgress
		}
	case cur.state == pubsub.PartitionStateInProgress && oth.version == version:
		p.onB = !p.onB
	default:
		*oth = partition{state: pubsub.PartitionStateInProgress, version: version}
		cur.state = pubsub.PartitionStateActive
		p.onB = !p.onB
	}
}

// status is the two ZbootStatus records for the running version.
func (p *partitions) status(running string) []pubsub.ZbootStatus {
	p.current().version = running
	rec := func(label, dev string, q *partition, current bool) pubsub.ZbootStatus {
		return pubsub.ZbootStatus{PartitionLabel: label, PartitionDevname: dev, PartitionState: q.state,
			ShortVersion: q.version, LongVersion: q.version, CurrentPartition: current, TestComplete: current && q.tested}
	}
	return []pubsub.ZbootStatus{
		rec(pubsub.PartitionIMGA, "/dev/sda2", &p.a, !p.onB),
		rec(pubsub.PartitionIMGB, "/dev/sda3", &p.b, p.onB),
	}
}
