package pubsub

import "path/filepath"

// Agent (publisher) and topic names as EVE spells them.
const (
	AgentZedAgent  = "zedagent"
	AgentZedKube   = "zedkube"
	AgentZedRouter = "zedrouter"
	AgentBaseOsMgr = "baseosmgr"
	AgentNodeAgent = "nodeagent"

	TopicEdgeNodeClusterConfig = "EdgeNodeClusterConfig"
	TopicEdgeNodeClusterStatus = "EdgeNodeClusterStatus"
	TopicEdgeNodeInfo          = "EdgeNodeInfo"
	TopicNetworkInstanceStatus = "NetworkInstanceStatus"
	TopicBaseOsConfig          = "BaseOsConfig"
	TopicBaseOsStatus          = "BaseOsStatus"
	TopicZbootStatus           = "ZbootStatus"
	TopicNodeAgentStatus       = "NodeAgentStatus"
	TopicNodeDrainRequest      = "NodeDrainRequest"
	TopicNodeDrainStatus       = "NodeDrainStatus"

	// KeyGlobal is the key of single-instance topics.
	KeyGlobal = "global"
	// KeyNodeAgent is the key nodeagent publishes its status under.
	KeyNodeAgent = "nodeagent"
	// Partition labels, the keys of ZbootStatus.
	PartitionIMGA = "IMGA"
	PartitionIMGB = "IMGB"
)

// Root locates EVE's state: Run is "/run" and Persist "/persist" on a
// device; tests point both into a temp dir. Nothing here creates anything.
type Root struct {
	Run     string
	Persist string
}

// DeviceRoot is the layout on an EVE device.
var DeviceRoot = Root{Run: "/run", Persist: "/persist"}

// TopicDir is where a non-persistent publication lives: <Run>/<agent>/<topic>.
func (r Root) TopicDir(agent, topic string) string {
	return filepath.Join(r.Run, agent, topic)
}

// PersistentTopicDir is where a persistent publication lives:
// <Persist>/status/<agent>/<topic>.
func (r Root) PersistentTopicDir(agent, topic string) string {
	return filepath.Join(r.Persist, "status", agent, topic)
}

func keyFile(dir, key string) string { return filepath.Join(dir, key+".json") }

// EdgeNodeClusterConfig is <Run>/zedagent/EdgeNodeClusterConfig/global.json.
func (r Root) EdgeNodeClusterConfig() string {
	return keyFile(r.TopicDir(AgentZedAgent, TopicEdgeNodeClusterConfig), KeyGlobal)
}

// EdgeNodeClusterConfigPersistent is the same topic under
// <Persist>/status/: zedkube subscribes to it as a persistent topic, so a
// device may have only this copy. Readers fall back to it.
func (r Root) EdgeNodeClusterConfigPersistent() string {
	return keyFile(r.PersistentTopicDir(AgentZedAgent, TopicEdgeNodeClusterConfig), KeyGlobal)
}

// EdgeNodeClusterStatus is <Run>/zedkube/EdgeNodeClusterStatus/global.json.
func (r Root) EdgeNodeClusterStatus() string {
	return keyFile(r.TopicDir(AgentZedKube, TopicEdgeNodeClusterStatus), KeyGlobal)
}

// EdgeNodeInfo is <Run>/zedagent/EdgeNodeInfo/global.json.
func (r Root) EdgeNodeInfo() string {
	return keyFile(r.TopicDir(AgentZedAgent, TopicEdgeNodeInfo), KeyGlobal)
}

// EdgeNodeInfoPersistent is the same topic under <Persist>/status/:
// zedagent publishes EdgeNodeInfo as persistent. Readers fall back to it.
func (r Root) EdgeNodeInfoPersistent() string {
	return keyFile(r.PersistentTopicDir(AgentZedAgent, TopicEdgeNodeInfo), KeyGlobal)
}

// NetworkInstanceStatusDir is <Run>/zedrouter/NetworkInstanceStatus.
func (r Root) NetworkInstanceStatusDir() string {
	return r.TopicDir(AgentZedRouter, TopicNetworkInstanceStatus)
}

// NetworkInstanceStatus is <Run>/zedrouter/NetworkInstanceStatus/<uuid>.json.
func (r Root) NetworkInstanceStatus(niUUID string) string {
	return keyFile(r.NetworkInstanceStatusDir(), niUUID)
}

// BaseOsConfigDir is <Run>/zedagent/BaseOsConfig.
func (r Root) BaseOsConfigDir() string { return r.TopicDir(AgentZedAgent, TopicBaseOsConfig) }

// BaseOsConfig is <Run>/zedagent/BaseOsConfig/<content-tree-uuid>.json.
func (r Root) BaseOsConfig(contentTreeUUID string) string {
	return keyFile(r.BaseOsConfigDir(), contentTreeUUID)
}

// BaseOsStatusDir is <Run>/baseosmgr/BaseOsStatus.
func (r Root) BaseOsStatusDir() string { return r.TopicDir(AgentBaseOsMgr, TopicBaseOsStatus) }

// BaseOsStatus is <Run>/baseosmgr/BaseOsStatus/<content-tree-uuid>.json.
func (r Root) BaseOsStatus(contentTreeUUID string) string {
	return keyFile(r.BaseOsStatusDir(), contentTreeUUID)
}

// ZbootStatusDir is <Run>/baseosmgr/ZbootStatus.
func (r Root) ZbootStatusDir() string { return r.TopicDir(AgentBaseOsMgr, TopicZbootStatus) }

// ZbootStatus is <Run>/baseosmgr/ZbootStatus/<IMGA|IMGB>.json.
func (r Root) ZbootStatus(partition string) string {
	return keyFile(r.ZbootStatusDir(), partition)
}

// NodeAgentStatus is <Run>/nodeagent/NodeAgentStatus/nodeagent.json.
func (r Root) NodeAgentStatus() string {
	return keyFile(r.TopicDir(AgentNodeAgent, TopicNodeAgentStatus), KeyNodeAgent)
}

// NodeDrainRequest is <Run>/<agent>/NodeDrainRequest/global.json; agent is
// AgentBaseOsMgr (OS update) or AgentZedAgent (reboot, shutdown).
func (r Root) NodeDrainRequest(agent string) string {
	return keyFile(r.TopicDir(agent, TopicNodeDrainRequest), KeyGlobal)
}

// DrainRequestAgents are the publishers of NodeDrainRequest.
var DrainRequestAgents = []string{AgentBaseOsMgr, AgentZedAgent}

// NodeDrainStatus is <Run>/zedkube/NodeDrainStatus/global.json, the file
// evelet writes in zedkube's place.
func (r Root) NodeDrainStatus() string {
	return keyFile(r.TopicDir(AgentZedKube, TopicNodeDrainStatus), KeyGlobal)
}

// Checkpoint is <Persist>/checkpoint/lastconfig, zedagent's copy of the
// last config the controller sent.
func (r Root) Checkpoint() string { return filepath.Join(r.Persist, "checkpoint", "lastconfig") }

// DeviceECDHKey is <Persist>/certs/ecdh.key.pem, the device's ECDH key on
// devices without a TPM.
func (r Root) DeviceECDHKey() string { return filepath.Join(r.Persist, "certs", "ecdh.key.pem") }
