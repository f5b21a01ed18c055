package pubsub

import (
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"time"
)

// The structs below mirror EVE's pkg/pillar/types (and pkg/pillar/kubeapi
// for the drain types) field for field where evelet cares, with the same
// names and JSON-relevant Go types. Fields EVE has that evelet does not need
// are left out: decoding ignores them, and a file written by Write simply
// lacks them, exactly as an older EVE would. docs/eve-pubsub.md is the field
// reference.

// UUID is a UUID in its canonical text form. EVE's satori/go.uuid type
// marshals the zero UUID as "00000000-0000-0000-0000-000000000000", never as
// "", so an empty UUID is written that way too. Decoding keeps whatever
// string was there; Validate methods check the form where evelet needs it.
type UUID string

// NilUUID is the all-zero UUID EVE writes for "unset".
const NilUUID UUID = "00000000-0000-0000-0000-000000000000"

// IsNil reports whether the UUID is empty or all zero.
func (u UUID) IsNil() bool { return u == "" || u == NilUUID }

// Valid reports whether u is a UUID in canonical 8-4-4-4-12 hex form.
func (u UUID) Valid() bool { return validUUID(string(u)) }

// String returns the UUID text.
func (u UUID) String() string { return string(u) }

// MarshalText writes the nil UUID for an empty value, as EVE does.
func (u UUID) MarshalText() ([]byte, error) {
	if u == "" {
		return []byte(NilUUID), nil
	}
	return []byte(u), nil
}

// UnmarshalText accepts any string; case is normalised to lower.
func (u *UUID) UnmarshalText(b []byte) error {
	*u = UUID(strings.ToLower(string(b)))
	return nil
}

func validUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return false
			}
		}
	}
	return true
}

// UUIDandVersion is pillar's types.UUIDandVersion.
type UUIDandVersion struct {
	UUID    UUID
	Version string
}

// ErrorEntity is pillar's types.ErrorEntity.
type ErrorEntity struct {
	EntityType int32
	EntityID   string
}

// ErrorDescription is pillar's types.ErrorDescription. Older EVE releases
// only have Error and ErrorTime; the others then decode as zero.
type ErrorDescription struct {
	Error               string
	ErrorTime           time.Time
	ErrorSeverity       int32
	ErrorRetryCondition string
	ErrorEntities       []*ErrorEntity
}

// ErrorAndTime is pillar's types.ErrorAndTime. It is embedded, so its fields
// appear at the top level of the embedding struct's JSON.
type ErrorAndTime struct {
	ErrorDescription
}

// HasError reports whether an error is set.
func (e ErrorAndTime) HasError() bool { return e.Error != "" }

// CipherContext is pillar's types.CipherContext: which controller and device
// certificates (by hash) an encrypted block was made for, and the schemes.
// The scheme fields carry eve-api protobuf enum numbers
// (evecommon.HashAlgorithm, config.KeyExchangeScheme, config.EncryptionScheme).
type CipherContext struct {
	ContextID          string
	HashScheme         int32
	KeyExchangeScheme  int32
	EncryptionScheme   int32
	ControllerCertHash []byte
	DeviceCertHash     []byte
	ErrorAndTime
}

// Eve-api enum values evelet checks in a CipherContext.
const (
	KeyExchangeSchemeECDH     int32 = 1 // config.KeyExchangeScheme_KEA_ECDH
	EncryptionSchemeAES256CFB int32 = 1 // config.EncryptionScheme_SA_AES_256_CFB
)

// CipherBlockStatus is pillar's types.CipherBlockStatus: one encrypted
// object (here the cluster token) as zedagent parsed it from the config.
//
// Current EVE tags CipherData `json:"pubsub-large-CipherData"`, so that is
// the key in the file and the key Write uses. Releases before the tag wrote
// "CipherData"; decoding accepts either.
type CipherBlockStatus struct {
	CipherBlockID   string
	CipherContextID string
	InitialValue    []byte
	CipherData      []byte `json:"pubsub-large-CipherData"`
	ClearTextHash   []byte
	IsCipher        bool
	CipherContext   *CipherContext
	ErrorAndTime
}

// UnmarshalJSON decodes both the current and the pre-"pubsub-large" shape.
func (c *CipherBlockStatus) UnmarshalJSON(b []byte) error {
	type plain CipherBlockStatus
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	if p.CipherData == nil {
		var legacy struct {
			CipherData []byte `json:"CipherData"`
		}
		if err := json.Unmarshal(b, &legacy); err != nil {
			return err
		}
		p.CipherData = legacy.CipherData
	}
	*c = CipherBlockStatus(p)
	return nil
}

// ClusterType is pillar's types.ClusterType (proto EdgeNodeCluster.cluster_type).
type ClusterType uint8

// ClusterType values.
const (
	ClusterTypeNone              ClusterType = 0
	ClusterTypeK3sBase           ClusterType = 1
	ClusterTypeReplicatedStorage ClusterType = 2
	ClusterTypeHA                ClusterType = 3
)

// LBInterfaceConfig is pillar's types.LBInterfaceConfig.
type LBInterfaceConfig struct {
	Interface string
	IPPrefix  string
}

// EdgeNodeClusterConfig is pillar's types.EdgeNodeClusterConfig, published
// by zedagent under key "global". Valid=false means "not in a cluster".
type EdgeNodeClusterConfig struct {
	Initialized      bool
	Valid            bool
	ClusterName      string
	ClusterID        UUIDandVersion
	ClusterInterface string
	// ClusterIPPrefix is this node's address with its prefix length
	// (host bits kept): {"IP":"10.1.0.5","Mask":"////AA=="}.
	ClusterIPPrefix *net.IPNet
	IsWorkerNode    bool
	JoinServerIP    net.IP
	BootstrapNode   bool
	CipherToken     CipherBlockStatus
	// CipherGzipRegistrationManifestYaml shares CipherToken's cipher block.
	CipherGzipRegistrationManifestYaml CipherBlockStatus
	ClusterType                        ClusterType
	TieBreakerNodeID                   UUIDandVersion
	EnableNativeK8SOrchestration       bool
	LBInterfaces                       []LBInterfaceConfig
	MasterNodeIDs                      []UUID
}

// EdgeNodeClusterStatus is pillar's types.EdgeNodeClusterStatus, published
// by zedkube (EVE-k builds only) under key "global". EncryptedClusterToken
// holds the decrypted token despite its name.
type EdgeNodeClusterStatus struct {
	ClusterName           string
	ClusterID             UUIDandVersion
	ClusterInterface      string
	ClusterIPPrefix       *net.IPNet
	ClusterIPIsReady      bool
	IsWorkerNode          bool
	JoinServerIP          net.IP
	BootstrapNode         bool
	EncryptedClusterToken string
	LBInterfaces          []LBInterfaceConfig
	LBIPPrefixes          []string
	LBConfigError         ErrorDescription
	Error                 ErrorDescription
}

// EdgeNodeInfo is pillar's types.EdgeNodeInfo, published by zedagent under
// key "global". DeviceID is a string in EVE too.
type EdgeNodeInfo struct {
	DeviceName     string
	DeviceID       string
	ProjectName    string
	ProjectID      string
	EnterpriseName string
	EnterpriseID   string
}

// NetworkInstanceType is pillar's types.NetworkInstanceType (proto ZNetworkInstType).
type NetworkInstanceType int32

// NetworkInstanceType values that exist on current EVE.
const (
	NetworkInstanceTypeSwitch NetworkInstanceType = 1
	NetworkInstanceTypeLocal  NetworkInstanceType = 2
)

// AddressType is pillar's types.AddressType.
type AddressType int32

// AddressType values.
const (
	AddressTypeNone AddressType = 0
	AddressTypeIPV4 AddressType = 1
	AddressTypeIPV6 AddressType = 2
)

// IPRange is pillar's types.IPRange (types/dpc.go): an unset end is left
// out of the JSON, as EVE's omitempty tags do.
type IPRange struct {
	Start net.IP `json:",omitempty"`
	End   net.IP `json:",omitempty"`
}

// NetworkInstanceConfig is the subset of pillar's types.NetworkInstanceConfig
// (types/zedroutertypes.go) that NetworkInstanceStatus embeds and evelet
// reads. UUIDandVersion is embedded as in EVE, so "UUID" and "Version" are
// top-level JSON keys.
type NetworkInstanceConfig struct {
	UUIDandVersion
	DisplayName string
	Type        NetworkInstanceType
	// Activate is shadowed in NetworkInstanceStatus's JSON by the status's
	// own uint64 Activate, exactly as in EVE.
	Activate bool
	// PortLabel names the port(s) for external connectivity: one port's
	// logical label or a shared label such as "uplink" matching several.
	// (EVE before 13.0 had PortLogicalLabel instead; not read.)
	PortLabel  string
	IpType     AddressType
	Subnet     *net.IPNet
	Gateway    net.IP
	DomainName string
	DnsServers []net.IP
	DhcpRange  IPRange
	ErrorAndTime
}

// NetworkInstanceInfo is the subset of pillar's types.NetworkInstanceInfo
// evelet reads. BridgeMac is a net.HardwareAddr, which encoding/json writes
// as base64 of the six bytes (it has no text marshaller).
type NetworkInstanceInfo struct {
	BridgeNum     int
	BridgeName    string
	BridgeIPAddr  net.IP
	BridgeMac     net.HardwareAddr
	BridgeIfindex int
	// IPAssignments are the addresses EVE gave its apps on this NI, keyed
	// by the app interface's MAC (cni/eveni never hands them to a pod).
	IPAssignments map[string]AssignedAddrs
}

// AssignedAddrs is pillar's types.AssignedAddrs.
type AssignedAddrs struct {
	IPv4Addrs []AssignedAddr
	IPv6Addrs []AssignedAddr
}

// AssignedAddr is pillar's types.AssignedAddr; AssignedBy is its
// AddressSource (a uint8 enum, not read).
type AssignedAddr struct {
	Address    net.IP
	AssignedBy uint8
}

// ChangeInProgressType is pillar's types.ChangeInProgressType.
type ChangeInProgressType int32

// ChangeInProgressType values: readers should wait while it is not None.
const (
	ChangeInProgressTypeNone   ChangeInProgressType = 0
	ChangeInProgressTypeCreate ChangeInProgressType = 1
	ChangeInProgressTypeModify ChangeInProgressType = 2
	ChangeInProgressTypeDelete ChangeInProgressType = 3
)

// NetworkInstanceStatus is the subset of pillar's types.NetworkInstanceStatus
// (types/zedroutertypes.go, EVE 13.0 and later) published by zedrouter, one
// file per NI UUID. The *Err fields are nested objects, not embedded.
type NetworkInstanceStatus struct {
	NetworkInstanceConfig
	NetworkInstanceInfo
	// Activate is a counter in the status (EVE: "Make sure the Activate
	// from the config isn't exposed as a boolean").
	Activate         uint64
	Activated        bool
	ChangeInProgress ChangeInProgressType
	// IPConflictErr is set when the NI subnet overlaps a device port's or
	// another NI's (EVE before 12.0 had a NIConflict bool instead).
	IPConflictErr ErrorAndTime
	// MTU is the MTU in use (the config's requested MTU is shadowed in JSON).
	MTU            uint16
	MTUConflictErr ErrorAndTime
	// Ports are the logical labels of the device ports in use for external
	// connectivity; empty for an air-gapped NI.
	Ports   []string
	PortErr ErrorAndTime
	// ErrorAndTime is the combined error EVE reports for the NI.
	ErrorAndTime
}

// BaseOsConfig is pillar's types.BaseOsConfig, published by zedagent, one
// file per content-tree UUID.
type BaseOsConfig struct {
	BaseOsVersion      string
	ContentTreeUUID    string
	RetryUpdateCounter uint32
	Activate           bool
}

// SwState is pillar's types.SwState. The numbering has shifted between EVE
// releases (states were inserted); only SwStateInitial is stable. evelet
// should not branch on other values.
type SwState uint8

// SwStateInitial is the first SwState (100, to be told apart from info.ZSwState).
const SwStateInitial SwState = 100

// BaseOsStatus is pillar's types.BaseOsStatus, published by baseosmgr, one
// file per content-tree UUID.
type BaseOsStatus struct {
	BaseOsVersion   string
	Activated       bool
	TooEarly        bool
	ContentTreeUUID string
	PartitionLabel  string
	PartitionDevice string
	PartitionState  string
	State           SwState
	ErrorAndTime
}

// Partition states found in ZbootStatus.PartitionState and BaseOsStatus.PartitionState.
const (
	PartitionStateActive     = "active"
	PartitionStateUpdating   = "updating"
	PartitionStateInProgress = "inprogress"
	PartitionStateUnused     = "unused"
)

// ZbootStatus is pillar's types.ZbootStatus, published by baseosmgr under
// keys "IMGA" and "IMGB".
type ZbootStatus struct {
	PartitionLabel   string
	PartitionDevname string
	PartitionState   string
	ShortVersion     string
	LongVersion      string
	CurrentPartition bool
	TestComplete     bool
}

// MaintenanceModeReason is pillar's types.MaintenanceModeReason, the
// eve-api info.MaintenanceModeReason enum number.
type MaintenanceModeReason int32

// NodeAgentStatus is pillar's types.NodeAgentStatus (types/zedagenttypes.go),
// published by nodeagent under key "nodeagent" (its Name).
type NodeAgentStatus struct {
	Name             string
	CurPart          string
	UpdateInprogress bool
	// RemainingTestTime is encoded as integer nanoseconds.
	RemainingTestTime    time.Duration
	DeviceReboot         bool
	DeviceShutdown       bool
	DevicePoweroff       bool
	AllDomainsHalted     bool
	RebootReason         string
	BootReason           uint8
	RebootStack          string
	RebootTime           time.Time
	RestartCounter       uint32
	RebootImage          string
	LocalMaintenanceMode bool
	// LocalMaintenanceModeReasons lists every reason (EVE before 14.3 had
	// one LocalMaintenanceModeReason; not read).
	LocalMaintenanceModeReasons []MaintenanceModeReason
	HVTypeKube                  bool
	// WaitDrainInProgress: nodeagent holds a reboot/shutdown until the
	// node drain it requested completes.
	WaitDrainInProgress bool
}

// DrainStatus is pkg/pillar/kubeapi.DrainStatus.
type DrainStatus uint8

// DrainStatus values (kubeapi.UNKNOWN .. kubeapi.COMPLETE).
const (
	DrainStatusUnknown       DrainStatus = 0
	DrainStatusNotSupported  DrainStatus = 1
	DrainStatusNotRequested  DrainStatus = 2
	DrainStatusRequested     DrainStatus = 3
	DrainStatusStarting      DrainStatus = 4
	DrainStatusCordoned      DrainStatus = 5
	DrainStatusFailedCordon  DrainStatus = 6
	DrainStatusDrainRetrying DrainStatus = 7
	DrainStatusFailedDrain   DrainStatus = 8
	DrainStatusComplete      DrainStatus = 9
)

var drainStatusNames = [...]string{
	"Unknown", "NotSupported", "NotRequested", "Requested", "Starting",
	"Cordoned", "FailedCordon", "DrainRetrying", "FailedDrain", "Complete",
}

func (s DrainStatus) String() string {
	if int(s) < len(drainStatusNames) {
		return drainStatusNames[s]
	}
	return "DrainStatus(" + strconv.Itoa(int(s)) + ")"
}

// DrainRequester is pkg/pillar/kubeapi.DrainRequester. It starts at 1.
type DrainRequester uint8

// DrainRequester values (kubeapi.NONE, DEVICEOP, UPDATE).
const (
	DrainRequesterNone     DrainRequester = 1
	DrainRequesterDeviceOp DrainRequester = 2 // reboot or shutdown
	DrainRequesterUpdate   DrainRequester = 3 // base OS update
)

func (r DrainRequester) String() string {
	switch r {
	case DrainRequesterNone:
		return "None"
	case DrainRequesterDeviceOp:
		return "DeviceOp"
	case DrainRequesterUpdate:
		return "Update"
	}
	return "DrainRequester(" + strconv.Itoa(int(r)) + ")"
}

// NodeDrainRequest is pkg/pillar/kubeapi.NodeDrainRequest, published under
// key "global" by baseosmgr (OS update) and by zedagent (reboot/shutdown).
type NodeDrainRequest struct {
	RequestedAt time.Time
	RequestedBy DrainRequester
	Context     string
}

// NodeDrainStatus is pkg/pillar/kubeapi.NodeDrainStatus, published under key
// "global" by zedkube; evelet writes it in zedkube's place.
type NodeDrainStatus struct {
	Status      DrainStatus
	RequestedBy DrainRequester
}

// DeviceNetworkStatus is the subset of pillar's types.DeviceNetworkStatus
// (published by nim under the key "global") evelet reads: the ports and
// the resolvers EVE uses on each.
type DeviceNetworkStatus struct {
	// Testing: nim is still testing this port configuration.
	Testing bool
	Ports   []NetworkPortStatus
}

// NetworkPortStatus is the subset of pillar's types.NetworkPortStatus
// evelet reads. DNSServers come from DHCP or the port's static config.
type NetworkPortStatus struct {
	IfName       string
	Logicallabel string
	IsMgmt       bool
	Up           bool
	DNSServers   []net.IP
}
