package pubsub

import "path/filepath"

// Agent (publisher) and topic names as EVE spells them.
const (
	AgentZedAgent  = "zedagent"
	AgentZedKube   = "zedkube"
	AgentZedRouter = "zedrouter"
	AgentBaseOsMgr = "baseosmgr"
	AgentNodeAgent = "nodeagent"
	AgentNIM       = "nim"

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
	TopicControllerCert        = "ControllerCert"
	TopicDeviceNetworkStatus   = "DeviceNetworkStatus"

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

// EdgeNodeClusterConfigPersistent is the same topic under <Persist>/status/:
// where EVE before 16.12.0 published it (persistent). Since 16.12.0 it is
// non-persistent (pillar cmd/zedagent/zedagent.go, commit "Make EdgeNodeInfo
// and EdgeClusterConfig be not persistent") and nothing removes the old
// file, so on a current EVE this is a stale leftover. eve decides,
// by EVE version, whether to believe it.
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

// EdgeNodeInfoPersistent is the same topic under <Persist>/status/, where
// EVE before 16.12.0 published it; a stale leftover on later releases (see
// EdgeNodeClusterConfigPersistent).
func (r Root) EdgeNodeInfoPersistent() string {
	return keyFile(r.PersistentTopicDir(AgentZedAgent, TopicEdgeNodeInfo), KeyGlobal)
}

// ControllerCertDir is <Run>/zedagent/ControllerCert: one
// <hex(CertHash)>.json per controller certificate. zedagent publishes the
// topic non-persistently since EVE 16.12.0 (pillar cmd/zedagent/zedagent.go,
// commit "Make ControllerCert and CipherContext be in memory").
func (r Root) ControllerCertDir() string { return r.TopicDir(AgentZedAgent, TopicControllerCert) }

// ControllerCertDirPersistent is <Persist>/status/zedagent/ControllerCert,
// where EVE before 16.12.0 published the controller certificates. Later
// releases leave the old copies there, possibly stale.
func (r Root) ControllerCertDirPersistent() string {
	return r.PersistentTopicDir(AgentZedAgent, TopicControllerCert)
}

// EVERelease is <Run>/eve-release, the running EVE version: init copies
// /etc/eve-release there at boot (pkg/dom0-ztools/rootfs/etc/init.d/009-id)
// and pillar reads it as types.EveVersionFile (pkg/pillar/types/locationconsts.go).
func (r Root) EVERelease() string { return filepath.Join(r.Run, "eve-release") }

// EVEHVType is <Run>/eve-hv-type, the build flavour ("kvm", "xen", "k",
// ...): EVE's init (pkg/dom0-ztools 009-id) copies /etc/eve-hv-type there
// before any pillar agent starts, and pillar base.IsHVTypeKube reads it.
func (r Root) EVEHVType() string { return filepath.Join(r.Run, "eve-hv-type") }

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

// DeviceNetworkStatus is <Run>/nim/DeviceNetworkStatus/global.json: the
// device's ports as nim brought them up, with the DNS servers each got.
func (r Root) DeviceNetworkStatus() string {
	return keyFile(r.TopicDir(AgentNIM, TopicDeviceNetworkStatus), KeyGlobal)
}
