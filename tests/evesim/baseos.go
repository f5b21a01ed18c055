package evesim

import (
	"fmt"
	"time"

	"github.com/lf-edge/evelet/eve/pubsub"
)

// The OS update and reboot side of EVE, published the way pillar does it
// (read from pkg/pillar/cmd/baseosmgr, cmd/zedagent, cmd/nodeagent and
// kubeapi/nodedrain.go):
//   - zedagent publishes BaseOsConfig (key: content-tree UUID) with
//     Activate when the controller asks for a new version;
//   - on builds that ask, baseosmgr publishes NodeDrainRequest (key
//     "global", RequestedBy UPDATE, Context = the BaseOsConfig key) before
//     it writes the other partition, and unpublishes it when the drain
//     status says FailedCordon or FailedDrain; zedagent does the same with
//     RequestedBy DEVICEOP before a reboot or shutdown;
//   - baseosmgr marks the other partition "updating" in ZbootStatus once
//     the image is written; nodeagent then sets DeviceReboot.
// Reboot (device.go) is the reboot itself.

// BaseOsContentTree is the content-tree UUID ActivateBaseOs publishes under.
const BaseOsContentTree = "6d1a2b3c-4d5e-4f60-8172-839405a6b7c8"

// ActivateBaseOs is zedagent publishing BaseOsConfig for version with
// Activate set (retry is RetryUpdateCounter). It returns the key.
func (d *Device) ActivateBaseOs(version string, retry uint32) (string, error) {
	c := pubsub.BaseOsConfig{BaseOsVersion: version, ContentTreeUUID: BaseOsContentTree, RetryUpdateCounter: retry, Activate: true}
	if err := pubsub.Write(d.Root.BaseOsConfig(BaseOsContentTree), c); err != nil {
		return "", fmt.Errorf("evesim: %w", err)
	}
	return BaseOsContentTree, nil
}

// RemoveBaseOs is zedagent unpublishing the BaseOsConfig (the controller
// no longer asks for that version).
func (d *Device) RemoveBaseOs() error {
	return pubsub.Unpublish(d.Root.BaseOsConfig(BaseOsContentTree))
}

// FailBaseOs is baseosmgr reporting an error on the update (download or
// install failed): BaseOsStatus with Error set; no reboot follows.
func (d *Device) FailBaseOs(version, msg string) error {
	s := pubsub.BaseOsStatus{BaseOsVersion: version, ContentTreeUUID: BaseOsContentTree}
	s.Error, s.ErrorTime = msg, time.Now()
	if err := pubsub.Write(d.Root.BaseOsStatus(BaseOsContentTree), s); err != nil {
		return fmt.Errorf("evesim: %w", err)
	}
	return nil
}

// RequestDrain is baseosmgr (requester Update, context = the BaseOsConfig
// key) or zedagent (requester DeviceOp, context = the operation) asking
// for a drain, as kubeapi.RequestNodeDrain publishes it. Each call is a
// new request (a new RequestedAt).
func (d *Device) RequestDrain(by pubsub.DrainRequester, context string) (pubsub.NodeDrainRequest, error) {
	agent := pubsub.AgentBaseOsMgr
	if by == pubsub.DrainRequesterDeviceOp {
		agent = pubsub.AgentZedAgent
	}
	r := pubsub.NodeDrainRequest{RequestedAt: time.Now(), RequestedBy: by, Context: context}
	if err := pubsub.Write(d.Root.NodeDrainRequest(agent), r); err != nil {
		return r, fmt.Errorf("evesim: %w", err)
	}
	return r, nil
}

// WithdrawDrain is the requester unpublishing its NodeDrainRequest, as
// baseosmgr and zedagent do on FailedCordon or FailedDrain.
func (d *Device) WithdrawDrain(by pubsub.DrainRequester) error {
	agent := pubsub.AgentBaseOsMgr
	if by == pubsub.DrainRequesterDeviceOp {
		agent = pubsub.AgentZedAgent
	}
	return pubsub.Unpublish(d.Root.NodeDrainRequest(agent))
}

// SetPartitionUpdating is baseosmgr having written version to the other
// partition and marked it updating; the next Reboot into version boots it.
func (d *Device) SetPartitionUpdating(version string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.parts.other().state, d.parts.other().version = pubsub.PartitionStateUpdating, version
	return d.writeZboot()
}

// CompleteTest is the end of the new partition's test window
// (timer.test.baseimage.update): it becomes active, the old one unused.
func (d *Device) CompleteTest() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.parts.current().state, d.parts.current().tested = pubsub.PartitionStateActive, true
	*d.parts.other() = partition{state: pubsub.PartitionStateUnused}
	return d.writeZboot()
}

// CurrentPartition is the label of the partition the device runs from.
func (d *Device) CurrentPartition() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.parts.currentLabel()
}

// SetNodeAgent is nodeagent publishing its status. kube says the build is
// EVE-k (HVTypeKube: it asks for drains); reboot is DeviceReboot.
func (d *Device) SetNodeAgent(kube, reboot bool) error {
	d.mu.Lock()
	cur := d.OSVersion
	d.mu.Unlock()
	s := pubsub.NodeAgentStatus{Name: pubsub.KeyNodeAgent, CurPart: d.CurrentPartition(), HVTypeKube: kube, DeviceReboot: reboot,
		RebootReason: "evesim", RebootImage: cur}
	if err := pubsub.Write(d.Root.NodeAgentStatus(), s); err != nil {
		return fmt.Errorf("evesim: %w", err)
	}
	return nil
}

// PublishBoot is init and baseosmgr at boot: <Run>/eve-release and
// ZbootStatus for the running version (Reboot does this too; a harness
// that empties <Run> after Reboot calls it again).
func (d *Device) PublishBoot() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.writeBoot()
}
