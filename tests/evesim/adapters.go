package evesim

import (
	"path/filepath"

	"github.com/lf-edge/evelet/eve/pubsub"
)

// Adapter is one I/O adapter as domainmgr publishes it in
// AssignableAdapters (pillar types.IoBundle; JSON keys are its Go field
// names). Type is pillar's IoType: 1 Ethernet, 2 USB, 3 serial (COM),
// 7 HDMI, 14 USB device, 255 other.
type Adapter struct {
	Type         uint8
	Phylabel     string
	Logicallabel string
	Ifname       string `json:",omitempty"`
	PciLong      string `json:",omitempty"`
	Serial       string `json:",omitempty"`
	UsbAddr      string `json:",omitempty"`
	UsbProduct   string `json:",omitempty"`
	// UsedByUUID is the EVE app holding the adapter; domainmgr writes the
	// nil UUID when none does.
	UsedByUUID string
	IsPort     bool `json:",omitempty"`
}

type assignableAdapters struct {
	Initialized  bool
	IoBundleList []Adapter
}

// PublishAdapters writes <Run>/domainmgr/AssignableAdapters/global.json as
// domainmgr does from the device model and the config's deviceIoList.
func (d *Device) PublishAdapters(list []Adapter) error {
	for i := range list {
		if list[i].UsedByUUID == "" {
			list[i].UsedByUUID = "00000000-0000-0000-0000-000000000000"
		}
	}
	p := filepath.Join(d.Root.TopicDir("domainmgr", "AssignableAdapters"), pubsub.KeyGlobal+".json")
	return pubsub.Write(p, assignableAdapters{Initialized: true, IoBundleList: list})
}
