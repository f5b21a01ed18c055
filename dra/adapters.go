package dra

import (
	"path/filepath"
	"strings"

	"github.com/lf-edge/evelet/eve/pubsub"
)

// EVE's list of I/O adapters: domainmgr publishes pillar's
// types.AssignableAdapters (pkg/pillar/types/assignableadapters.go) as
// <Run>/domainmgr/AssignableAdapters/global.json, built from the
// EdgeDevConfig's deviceIoList (PhysicalIO) and the device model. Only the
// fields evelet reads are here, with pillar's Go field names (the JSON
// keys).
const (
	agentDomainMgr          = "domainmgr"
	topicAssignableAdapters = "AssignableAdapters"
)

// AdaptersFile is where domainmgr publishes AssignableAdapters.
func AdaptersFile(r pubsub.Root) string {
	return filepath.Join(r.TopicDir(agentDomainMgr, topicAssignableAdapters), pubsub.KeyGlobal+".json")
}

// AssignableAdapters is pillar's types.AssignableAdapters (the subset).
type AssignableAdapters struct {
	Initialized  bool       `json:",omitempty"`
	IoBundleList []IoBundle `json:",omitempty"`
}

// IoBundle is one adapter (pillar's types.IoBundle, the subset).
type IoBundle struct {
	Type            IoType `json:",omitempty"`
	Phylabel        string `json:",omitempty"`
	Logicallabel    string `json:",omitempty"`
	AssignmentGroup string `json:",omitempty"`
	Usage           int    `json:",omitempty"`
	Ifname          string `json:",omitempty"`
	PciLong         string `json:",omitempty"` // "0000:03:00.0"
	Serial          string `json:",omitempty"` // "/dev/ttyS1"
	UsbAddr         string `json:",omitempty"` // "<bus>:<port path>", e.g. "1:2.3"
	UsbProduct      string `json:",omitempty"` // "<vendor>:<product>", e.g. "0951:1666"
	// UsedByUUID is the EVE app (or dom0) holding the adapter; unset (or
	// the nil UUID) when no one does.
	UsedByUUID string        `json:",omitempty"`
	IsPort     bool          `json:",omitempty"` // one of EVE's own network ports
	Error      IOBundleError `json:",omitempty"`
}

// IOBundleError is the adapter's error list (pillar's IOBundleError).
type IOBundleError struct {
	Errors []struct {
		ErrStr  string `json:",omitempty"`
		Warning bool   `json:",omitempty"`
	} `json:",omitempty"`
}

// IoType is pillar's types.IoType (the PhyIoType of eve-api's devmodel.proto).
type IoType uint8

// The IoType values evelet maps to device classes.
const (
	IoNetEth        IoType = 1
	IoUSB           IoType = 2
	IoCom           IoType = 3
	IoAudio         IoType = 4
	IoNetWLAN       IoType = 5
	IoNetWWAN       IoType = 6
	IoHDMI          IoType = 7
	IoNVMEStorage   IoType = 9
	IoSATAStorage   IoType = 10
	IoNetEthPF      IoType = 11
	IoNetEthVF      IoType = 12
	IoUSBController IoType = 13
	IoUSBDevice     IoType = 14
	IoCAN           IoType = 15
	IoVCAN          IoType = 16
	IoLCAN          IoType = 17
	IoOther         IoType = 255
)

// ReadAdapters reads domainmgr's adapter list; a missing file is an empty
// list (no adapter can be given out before EVE published it).
func ReadAdapters(r pubsub.Root) (AssignableAdapters, error) {
	aa, _, err := pubsub.Read[AssignableAdapters](AdaptersFile(r))
	return aa, err
}

// inUseByEVE: EVE gave the adapter to one of its own apps (or dom0).
func (b IoBundle) inUseByEVE() bool {
	u := strings.Trim(b.UsedByUUID, "0-")
	return u != ""
}

// hardError is the adapter's first error that is not a warning, "" if none.
func (b IoBundle) hardError() string {
	for _, e := range b.Error.Errors {
		if !e.Warning {
			return e.ErrStr
		}
	}
	return ""
}
