package pubsub

import (
	"net"
	"strconv"
)

// Validator is implemented by the topics evelet acts on. Read and Decode
// call it after decoding; a failure makes the file unusable.
type Validator interface {
	Validate() error
}

// Validate checks what evelet needs to join a cluster. With Valid false the
// device is not in a cluster and nothing else is required. With Valid true:
// a cluster identity (ClusterName, or a non-nil canonical ClusterID.UUID), a
// well-formed ClusterID.UUID if one is set, a JoinServerIP, and a
// ClusterIPPrefix whose mask fits its address if one is set.
func (c EdgeNodeClusterConfig) Validate() error {
	if !c.Valid {
		return nil
	}
	if !c.ClusterID.UUID.IsNil() && !c.ClusterID.UUID.Valid() {
		return &FieldError{Field: "ClusterID.UUID", Reason: "not a UUID: " + strconv.Quote(string(c.ClusterID.UUID))}
	}
	if c.ClusterName == "" && c.ClusterID.UUID.IsNil() {
		return &FieldError{Field: "ClusterName", Reason: "Valid is true but neither ClusterName nor ClusterID.UUID is set"}
	}
	if len(c.JoinServerIP) == 0 {
		return &FieldError{Field: "JoinServerIP", Reason: "missing (required when Valid is true)"}
	}
	if c.JoinServerIP.To16() == nil {
		return &FieldError{Field: "JoinServerIP", Reason: "not an IP address"}
	}
	if p := c.ClusterIPPrefix; p != nil && len(p.IP) > 0 {
		if !prefixOK(p) {
			return &FieldError{Field: "ClusterIPPrefix", Reason: "mask does not fit the address"}
		}
	}
	return nil
}

func prefixOK(p *net.IPNet) bool {
	ones, bits := p.Mask.Size()
	if bits == 0 && ones == 0 { // non-canonical mask
		return false
	}
	if p.IP.To4() != nil {
		return bits == 32 || bits == 128
	}
	return bits == 128
}

// Validate requires DeviceID to be a canonical UUID: evelet uses it as the
// node's identity and provider ID.
func (n EdgeNodeInfo) Validate() error {
	if n.DeviceID == "" {
		return &FieldError{Field: "DeviceID", Reason: "missing"}
	}
	if !validUUID(n.DeviceID) {
		return &FieldError{Field: "DeviceID", Reason: "not a UUID: " + strconv.Quote(n.DeviceID)}
	}
	return nil
}

// Validate requires RequestedBy to be one of the DrainRequester values.
func (r NodeDrainRequest) Validate() error {
	if r.RequestedBy < DrainRequesterNone || r.RequestedBy > DrainRequesterUpdate {
		return &FieldError{Field: "RequestedBy", Reason: "out of range 1..3: " + strconv.Itoa(int(r.RequestedBy))}
	}
	return nil
}
