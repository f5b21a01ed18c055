package pubsub

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func sample(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// roundTrip decodes a sample written in EVE's shape, re-encodes it, and
// checks that the output is the sample minus the fields we do not model
// (unknown): same keys, same values, nothing extra.
func roundTrip[T any](t *testing.T, name string, unknown ...string) T {
	t.Helper()
	in := sample(t, name)
	v, err := Decode[T](name, in)
	if err != nil {
		t.Fatalf("decode %s: %v", name, err)
	}
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var want, got map[string]any
	if err := json.Unmarshal(in, &want); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	for _, k := range unknown {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: sample lacks unknown field %q the test expects", name, k)
		}
		delete(want, k)
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			t.Errorf("%s: field %q is in EVE's shape but not written", name, k)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: field %q is written but not in EVE's shape", name, k)
		}
	}
	if !reflect.DeepEqual(want, got) {
		t.Errorf("%s: round trip differs\n got: %s\nwant: %s", name, out, in)
	}
	// And decoding our own output gives the same value.
	v2, err := Decode[T](name, out)
	if err != nil {
		t.Fatalf("decode own output: %v", err)
	}
	if !reflect.DeepEqual(v, v2) {
		t.Errorf("%s: re-decoded value differs:\n%+v\n%+v", name, v, v2)
	}
	return v
}

func TestRoundTripEdgeNodeClusterConfig(t *testing.T) {
	c := roundTrip[EdgeNodeClusterConfig](t, "EdgeNodeClusterConfig.json", "FutureKnob")
	if !c.Valid || !c.Initialized || c.ClusterName != "line3-cluster" || !c.IsWorkerNode {
		t.Errorf("flags/name: %+v", c)
	}
	if c.ClusterID.UUID != "6f1f7b2e-3c1a-4d5e-9a0b-1c2d3e4f5a6b" || c.ClusterID.Version != "7" {
		t.Errorf("ClusterID = %+v", c.ClusterID)
	}
	if c.ClusterIPPrefix == nil || c.ClusterIPPrefix.String() != "10.1.0.5/24" {
		t.Errorf("ClusterIPPrefix = %v", c.ClusterIPPrefix)
	}
	if !c.JoinServerIP.Equal(net.ParseIP("10.1.0.1")) {
		t.Errorf("JoinServerIP = %v", c.JoinServerIP)
	}
	tok := c.CipherToken
	if !tok.IsCipher || len(tok.InitialValue) != 16 || len(tok.CipherData) != 48 || len(tok.ClearTextHash) != 32 {
		t.Errorf("CipherToken = %+v", tok)
	}
	if !bytes.Equal(tok.InitialValue, []byte{0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f}) {
		t.Errorf("InitialValue = %x", tok.InitialValue)
	}
	if tok.CipherContext == nil || tok.CipherContext.KeyExchangeScheme != KeyExchangeSchemeECDH ||
		tok.CipherContext.EncryptionScheme != EncryptionSchemeAES256CFB || len(tok.CipherContext.DeviceCertHash) != 32 {
		t.Errorf("CipherContext = %+v", tok.CipherContext)
	}
	if c.ClusterType != ClusterTypeK3sBase || !c.TieBreakerNodeID.UUID.IsNil() || len(c.MasterNodeIDs) != 1 {
		t.Errorf("ClusterType/TieBreaker/Masters: %+v", c)
	}
}

func TestDecodeLegacyClusterConfig(t *testing.T) {
	c, err := Decode[EdgeNodeClusterConfig]("legacy", sample(t, "EdgeNodeClusterConfig-legacy.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.CipherToken.CipherData) != 48 {
		t.Errorf("legacy CipherData key not read: %d bytes", len(c.CipherToken.CipherData))
	}
	if c.ClusterType != ClusterTypeReplicatedStorage || !c.BootstrapNode || c.ClusterIPPrefix.String() != "192.168.86.20/24" {
		t.Errorf("legacy: %+v", c)
	}
	out, _ := json.Marshal(c.CipherToken)
	if !bytes.Contains(out, []byte(`"pubsub-large-CipherData":"8k9j`)) || bytes.Contains(out, []byte(`"CipherData"`)) {
		t.Errorf("re-encoded in the current shape expected: %s", out)
	}
}

func TestNotInClusterNeedsNothing(t *testing.T) {
	c, err := Decode[EdgeNodeClusterConfig]("x", sample(t, "EdgeNodeClusterConfig-notincluster.json"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Valid || c.ClusterIPPrefix != nil || c.JoinServerIP != nil {
		t.Errorf("%+v", c)
	}
}

func TestRoundTripEdgeNodeClusterStatus(t *testing.T) {
	s := roundTrip[EdgeNodeClusterStatus](t, "EdgeNodeClusterStatus.json")
	if s.EncryptedClusterToken != "K10d4e5f6::abcdef.0123456789abcdef" || !s.ClusterIPIsReady {
		t.Errorf("%+v", s)
	}
}

func TestRoundTripEdgeNodeInfo(t *testing.T) {
	n := roundTrip[EdgeNodeInfo](t, "EdgeNodeInfo.json")
	if n.DeviceName != "line3-edge-17" || n.DeviceID != "6ba7b810-9dad-11d1-80b4-00c04fd430c8" || n.EnterpriseName != "acme" {
		t.Errorf("%+v", n)
	}
}

func TestRoundTripNetworkInstanceStatus(t *testing.T) {
	ni := roundTrip[NetworkInstanceStatus](t, "NetworkInstanceStatus.json",
		"NtpServers", "DnsNameToIPList", "PropagateConnRoutes", "StaticRoutes", "EnableFlowlog",
		"STPConfig", "VlanAccessPorts", "ForwardLLDP", "MirrorIfName", "Vifs",
		"VlanMap", "NumTrunkPorts", "ValidationErr", "AllocationErr", "CombinedNTPServers",
		"IntendedRoutes", "CurrentRoutes", "ReconcileErr")
	if ni.UUID != "8b2d7c3a-55aa-4e8f-9b1c-0d2e3f4a5b6c" || ni.Type != NetworkInstanceTypeLocal ||
		ni.Activate != 4 || !ni.Activated {
		t.Errorf("ids/flags: %+v", ni)
	}
	if a := ni.IPAssignments["02:16:3e:aa:bb:01"].IPv4Addrs; len(a) != 1 || !a[0].Address.Equal(net.ParseIP("10.11.12.2")) {
		t.Errorf("IPAssignments: %+v", ni.IPAssignments)
	}
	if ni.BridgeName != "bn1" || ni.BridgeMac.String() != "02:16:3e:5a:01:02" || !ni.BridgeIPAddr.Equal(net.ParseIP("10.11.12.1")) {
		t.Errorf("bridge: %s %s %s", ni.BridgeName, ni.BridgeMac, ni.BridgeIPAddr)
	}
	if ni.Subnet.String() != "10.11.12.0/24" || !ni.DhcpRange.End.Equal(net.ParseIP("10.11.12.254")) ||
		len(ni.DnsServers) != 1 || ni.MTU != 1500 {
		t.Errorf("ip config: %v %v %v %d", ni.Subnet.String(), ni.DhcpRange, ni.DnsServers, ni.MTU)
	}
	if ni.PortLabel != "uplink" || strings.Join(ni.Ports, ",") != "eth0,eth1" ||
		!ni.IPConflictErr.HasError() || ni.IPConflictErr.ErrorSeverity != 2 || ni.MTUConflictErr.HasError() ||
		ni.ChangeInProgress != ChangeInProgressTypeNone {
		t.Errorf("ports/conflicts: %q %q %+v", ni.PortLabel, ni.Ports, ni.IPConflictErr)
	}
}

func TestRoundTripBaseOs(t *testing.T) {
	c := roundTrip[BaseOsConfig](t, "BaseOsConfig.json")
	if !c.Activate || c.BaseOsVersion != "14.5.2-lts-kvm-amd64" {
		t.Errorf("%+v", c)
	}
	s := roundTrip[BaseOsStatus](t, "BaseOsStatus.json")
	if s.PartitionState != PartitionStateUpdating || s.PartitionLabel != "IMGB" || s.State < SwStateInitial {
		t.Errorf("%+v", s)
	}
	z := roundTrip[ZbootStatus](t, "ZbootStatus-IMGA.json")
	if !z.CurrentPartition || z.PartitionState != PartitionStateActive || z.ShortVersion != "14.5.1-lts-kvm-amd64" {
		t.Errorf("%+v", z)
	}
}

func TestRoundTripNodeAgentStatus(t *testing.T) {
	n := roundTrip[NodeAgentStatus](t, "NodeAgentStatus.json")
	if n.RemainingTestTime != 10*time.Minute || n.RebootImage != "IMGB" || n.RebootTime.Nanosecond() != 123456789 {
		t.Errorf("%+v", n)
	}
	if !n.LocalMaintenanceMode || !reflect.DeepEqual(n.LocalMaintenanceModeReasons, []MaintenanceModeReason{1, 3}) || !n.WaitDrainInProgress {
		t.Errorf("maintenance/drain: %+v", n)
	}
}

func TestRoundTripDrain(t *testing.T) {
	r := roundTrip[NodeDrainRequest](t, "NodeDrainRequest.json")
	if r.RequestedBy != DrainRequesterUpdate || r.Context != "14.5.2-lts-kvm-amd64" ||
		!r.RequestedAt.Equal(time.Date(2024, 5, 1, 7, 58, 30, 5e8, time.UTC)) {
		t.Errorf("%+v", r)
	}
	s := roundTrip[NodeDrainStatus](t, "NodeDrainStatus.json")
	if s.Status != DrainStatusComplete || s.RequestedBy != DrainRequesterUpdate {
		t.Errorf("%+v", s)
	}
	if DrainStatusFailedDrain.String() != "FailedDrain" || DrainRequesterDeviceOp.String() != "DeviceOp" || DrainStatus(42).String() != "DrainStatus(42)" {
		t.Error("String()")
	}
}

func TestUUIDEncoding(t *testing.T) {
	b, _ := json.Marshal(UUIDandVersion{})
	if string(b) != `{"UUID":"00000000-0000-0000-0000-000000000000","Version":""}` {
		t.Errorf("empty UUID written as %s, EVE writes the nil UUID", b)
	}
	var u UUIDandVersion
	_ = json.Unmarshal([]byte(`{"UUID":"6F1F7B2E-3C1A-4D5E-9A0B-1C2D3E4F5A6B"}`), &u)
	if u.UUID != "6f1f7b2e-3c1a-4d5e-9a0b-1c2d3e4f5a6b" || !u.UUID.Valid() || u.UUID.IsNil() {
		t.Errorf("%q", u.UUID)
	}
}

// fileErr asserts err is a *FileError naming path and field.
func fileErr(t *testing.T, err error, path, field string) *FileError {
	t.Helper()
	var fe *FileError
	if !errors.As(err, &fe) {
		t.Fatalf("want *FileError, got %T %v", err, err)
	}
	if fe.Path != path || fe.Field != field {
		t.Fatalf("FileError path=%q field=%q, want %q %q (%v)", fe.Path, fe.Field, path, field, err)
	}
	msg := err.Error()
	if !strings.Contains(msg, path) || (field != "" && !strings.Contains(msg, field)) {
		t.Fatalf("message does not name file and field: %s", msg)
	}
	return fe
}

func TestMalformedJSONNamesFileAndOffset(t *testing.T) {
	_, err := Decode[EdgeNodeClusterConfig]("/run/x/global.json", []byte(`{"Valid": true, "ClusterName": x}`))
	fe := fileErr(t, err, "/run/x/global.json", "")
	if fe.Offset != 32 || !strings.Contains(err.Error(), "byte offset 32") {
		t.Errorf("offset %d: %v", fe.Offset, err)
	}
	_, err = Decode[EdgeNodeInfo]("empty.json", nil)
	if fe := fileErr(t, err, "empty.json", ""); fe.Offset != 0 {
		t.Errorf("empty file offset %d", fe.Offset)
	}
}

func TestWrongTypesNameTheField(t *testing.T) {
	cases := []struct {
		json, field string
	}{
		{`{"Valid":true,"ClusterName":"c","JoinServerIP":"10.1.0.x"}`, "JoinServerIP"},
		{`{"Valid":"yes"}`, "Valid"},
		{`{"ClusterID":{"UUID":"u","Version":7}}`, "ClusterID.Version"},
		{`{"ClusterIPPrefix":{"IP":"10.1.0.5","Mask":"not base64!"}}`, "ClusterIPPrefix"},
		{`{"CipherToken":{"InitialValue":12}}`, "CipherToken.InitialValue"},
		{`{"CipherToken":{"pubsub-large-CipherData":"%%%"}}`, "CipherToken"},
	}
	for _, c := range cases {
		_, err := Decode[EdgeNodeClusterConfig]("f.json", []byte(c.json))
		fileErr(t, err, "f.json", c.field)
	}
}

func TestValidateClusterConfig(t *testing.T) {
	good := `"Valid":true,"ClusterName":"c","JoinServerIP":"10.1.0.1"`
	cases := []struct {
		json, field string
	}{
		{`{` + good + `}`, ""},
		{`{"Valid":false}`, ""},
		{`{"Valid":true,"JoinServerIP":"10.1.0.1"}`, "ClusterName"},
		{`{"Valid":true,"ClusterID":{"UUID":"6f1f7b2e-3c1a-4d5e-9a0b-1c2d3e4f5a6b"},"JoinServerIP":"10.1.0.1"}`, ""},
		{`{"Valid":true,"ClusterID":{"UUID":"cluster-1"},"JoinServerIP":"10.1.0.1"}`, "ClusterID.UUID"},
		{`{"Valid":true,"ClusterName":"c"}`, "JoinServerIP"},
		{`{"Valid":true,"ClusterName":"c","JoinServerIP":""}`, "JoinServerIP"},
		{`{` + good + `,"ClusterIPPrefix":{"IP":"10.1.0.5","Mask":"/wD/AA=="}}`, "ClusterIPPrefix"},
		{`{` + good + `,"ClusterIPPrefix":{"IP":"fd00::5","Mask":"////AA=="}}`, "ClusterIPPrefix"},
		{`{` + good + `,"Unknown":{"deep":[1,2]}}`, ""},
	}
	for _, c := range cases {
		_, err := Decode[EdgeNodeClusterConfig]("/p/global.json", []byte(c.json))
		if c.field == "" {
			if err != nil {
				t.Errorf("%s: %v", c.json, err)
			}
			continue
		}
		fe := fileErr(t, err, "/p/global.json", c.field)
		var fld *FieldError
		if !errors.As(fe, &fld) {
			t.Errorf("%s: want a FieldError inside, got %v", c.json, fe.Err)
		}
	}
}

func TestValidateNodeInfoAndDrainRequest(t *testing.T) {
	for js, field := range map[string]string{
		`{"DeviceName":"d","DeviceID":"6ba7b810-9dad-11d1-80b4-00c04fd430c8"}`: "",
		`{"DeviceName":"d"}`:                      "DeviceID",
		`{"DeviceName":"d","DeviceID":"edge-17"}`: "DeviceID",
	} {
		_, err := Decode[EdgeNodeInfo]("i.json", []byte(js))
		if field == "" {
			if err != nil {
				t.Errorf("%s: %v", js, err)
			}
			continue
		}
		fileErr(t, err, "i.json", field)
	}
	for js, field := range map[string]string{
		`{"RequestedAt":"2024-05-01T10:00:00Z","RequestedBy":2}`: "",
		`{"RequestedBy":0}`:                           "RequestedBy",
		`{"RequestedBy":4}`:                           "RequestedBy",
		`{"RequestedBy":-1}`:                          "RequestedBy",
		`{"RequestedAt":"yesterday","RequestedBy":2}`: "RequestedAt",
	} {
		_, err := Decode[NodeDrainRequest]("r.json", []byte(js))
		if field == "" {
			if err != nil {
				t.Errorf("%s: %v", js, err)
			}
			continue
		}
		fileErr(t, err, "r.json", field)
	}
}
