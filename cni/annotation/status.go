package annotation

import "encoding/json"

// NetworkStatus is one element of the network-status annotation (the
// spec's "network status annotation" section).
type NetworkStatus struct {
	Name      string   `json:"name"`
	Interface string   `json:"interface,omitempty"`
	IPs       []string `json:"ips,omitempty"`
	MAC       string   `json:"mac,omitempty"`
	Default   bool     `json:"default,omitempty"`
	DNS       *DNS     `json:"dns,omitempty"`
	Gateway   []string `json:"gateway,omitempty"`
	// DefaultRoute is the spec's "default-route" status key (5.3.6.4): the
	// default gateways the attachment got because its selection element
	// asked for the default route.
	DefaultRoute []string `json:"default-route,omitempty"`
}

// DNS is the CNI result's DNS section as network-status shows it.
type DNS struct {
	Nameservers []string `json:"nameservers,omitempty"`
	Domain      string   `json:"domain,omitempty"`
	Search      []string `json:"search,omitempty"`
	Options     []string `json:"options,omitempty"`
}

// RenderStatus renders the network-status annotation value.
func RenderStatus(st []NetworkStatus) (string, error) {
	if st == nil {
		st = []NetworkStatus{}
	}
	b, err := json.MarshalIndent(st, "", "    ")
	return string(b), err
}
