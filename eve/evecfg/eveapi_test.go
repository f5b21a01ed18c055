package evecfg

import (
	"os"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/lf-edge/evelet/eve/evecfg/evepb"
)

// The files under testdata/eveapi were made by protoc from lf-edge/eve-api's
// own .proto files (testdata/eveapi/gen.sh, commit in SOURCE), not from ours.

// newerThanEveAPI lists what we declare that the eve-api commit in
// testdata/eveapi/SOURCE does not have yet: EVE 2c6b4154 vendors a newer
// eve-api (go v0.0.0-20260812180240-99d02ddcfcb0) whose edge_node_cluster.pb.go
// has these fields with these numbers and types.
var newerThanEveAPI = map[protoreflect.FullName]bool{
	"org.lfedge.eve.config.EdgeNodeCluster.master_node_uuids":               true,
	"org.lfedge.eve.config.EdgeNodeCluster.enable_native_k8s_orchestration": true,
}

func eveAPIFiles(t *testing.T) *protoregistry.Files {
	t.Helper()
	b, err := os.ReadFile("testdata/eveapi/descriptors.pb")
	if err != nil {
		t.Fatal(err)
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(b, &set); err != nil {
		t.Fatal(err)
	}
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestDeclaredMatchesEveAPI checks every message, field and enum value of our
// subset against eve-api's descriptors: same full name (so the proto package
// each type lives in), same field number, kind, cardinality and referenced
// type, same enum numbers.
func TestDeclaredMatchesEveAPI(t *testing.T) {
	api := eveAPIFiles(t)
	ours := []protoreflect.FileDescriptor{
		evepb.File_eve_common_proto, evepb.File_eve_config_proto, evepb.File_eve_auth_proto,
	}
	for _, f := range ours {
		enums := f.Enums()
		for i := 0; i < enums.Len(); i++ {
			checkEnum(t, api, enums.Get(i))
		}
		msgs := f.Messages()
		for i := 0; i < msgs.Len(); i++ {
			checkMessage(t, api, msgs.Get(i))
		}
	}
}

func checkEnum(t *testing.T, api *protoregistry.Files, e protoreflect.EnumDescriptor) {
	t.Helper()
	d, err := api.FindDescriptorByName(e.FullName())
	if err != nil {
		t.Errorf("enum %s: not in eve-api: %v", e.FullName(), err)
		return
	}
	ae, ok := d.(protoreflect.EnumDescriptor)
	if !ok {
		t.Errorf("%s: is not an enum in eve-api", e.FullName())
		return
	}
	vals := e.Values()
	for i := 0; i < vals.Len(); i++ {
		v := vals.Get(i)
		av := ae.Values().ByName(v.Name())
		switch {
		case av == nil:
			t.Errorf("enum %s: value %s not in eve-api", e.FullName(), v.Name())
		case av.Number() != v.Number():
			t.Errorf("enum %s: %s = %d, eve-api says %d", e.FullName(), v.Name(), v.Number(), av.Number())
		}
	}
}

func checkMessage(t *testing.T, api *protoregistry.Files, m protoreflect.MessageDescriptor) {
	t.Helper()
	d, err := api.FindDescriptorByName(m.FullName())
	if err != nil {
		t.Errorf("message %s: not in eve-api: %v", m.FullName(), err)
		return
	}
	am, ok := d.(protoreflect.MessageDescriptor)
	if !ok {
		t.Errorf("%s: is not a message in eve-api", m.FullName())
		return
	}
	fields := m.Fields()
	for i := 0; i < fields.Len(); i++ {
		f := fields.Get(i)
		af := am.Fields().ByNumber(f.Number())
		if af == nil {
			if !newerThanEveAPI[f.FullName()] {
				t.Errorf("%s: field number %d not in eve-api", f.FullName(), f.Number())
			}
			continue
		}
		if af.Name() != f.Name() {
			t.Errorf("%s (%d): eve-api names it %s", f.FullName(), f.Number(), af.Name())
		}
		if af.Kind() != f.Kind() || af.Cardinality() != f.Cardinality() {
			t.Errorf("%s (%d): %v %v, eve-api has %v %v", f.FullName(), f.Number(), f.Cardinality(), f.Kind(), af.Cardinality(), af.Kind())
		}
		if f.Message() != nil && af.Message() != nil && f.Message().FullName() != af.Message().FullName() {
			t.Errorf("%s (%d): message %s, eve-api has %s", f.FullName(), f.Number(), f.Message().FullName(), af.Message().FullName())
		}
		if f.Enum() != nil && af.Enum() != nil && f.Enum().FullName() != af.Enum().FullName() {
			t.Errorf("%s (%d): enum %s, eve-api has %s", f.FullName(), f.Number(), f.Enum().FullName(), af.Enum().FullName())
		}
	}
}

// TestDecodeEveAPIEncoded decodes bytes protoc made from eve-api's own
// .proto files and checks every value, in particular the ones whose numbers
// or packages evelet once had wrong (PhyIoType 13-15, ha_scheme, ipspec in
// org.lfedge.eve.common).
func TestDecodeEveAPIEncoded(t *testing.T) {
	b, err := os.ReadFile("testdata/eveapi/edgedevconfig.bin")
	if err != nil {
		t.Fatal(err)
	}
	var c evepb.EdgeDevConfig
	if err := proto.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	if c.GetId().GetUuid() != "6ba7b810-9dad-11d1-80b4-00c04fd430c8" || c.GetId().GetVersion() != "7" ||
		c.GetDeviceName() != "edge-17" || !c.GetMaintenanceMode() ||
		len(c.GetConfigItems()) != 1 || c.GetConfigItems()[0].GetValue() != "60" {
		t.Errorf("device: %v", &c)
	}
	nis := c.GetNetworkInstances()
	if len(nis) != 2 {
		t.Fatalf("network instances: %d, want 2", len(nis))
	}
	n := nis[0]
	if n.GetUuidandversion().GetUuid() != "ni1" || n.GetDisplayname() != "default" ||
		n.GetInstType() != evepb.ZNetworkInstType_ZnetInstLocal || !n.GetActivate() ||
		n.GetIpType() != evepb.AddressType_IPV4 || n.GetMtu() != 1400 {
		t.Errorf("network instance: %v", n)
	}
	if p := n.GetPort(); p.GetType() != evepb.PhyIoType_PhyIoCAN || p.GetType().String() != "PhyIoCAN" || p.GetName() != "can0" {
		t.Errorf("port type %d (%v), name %q; want 15 PhyIoCAN can0", p.GetType(), p.GetType(), p.GetName())
	}
	if p := nis[1].GetPort(); p.GetType() != evepb.PhyIoType_PhyIoUSBDevice || p.GetType().String() != "PhyIoUSBDevice" {
		t.Errorf("port type %d (%v); want 14 PhyIoUSBDevice", p.GetType(), p.GetType())
	}
	ip := n.GetIp()
	if ip.GetDhcp() != evepb.DHCPType_Client || ip.GetSubnet() != "10.1.0.0/24" || ip.GetGateway() != "10.1.0.1" ||
		strings.Join(ip.GetDns(), ",") != "10.1.0.1" || ip.GetDhcpRange().GetStart() != "10.1.0.2" ||
		ip.GetDhcpRange().GetEnd() != "10.1.0.9" || strings.Join(ip.GetMoreNtp(), ",") != "ntp2" {
		t.Errorf("ipspec: %v", ip)
	}
	if got := ip.ProtoReflect().Descriptor().FullName(); got != "org.lfedge.eve.common.ipspec" {
		t.Errorf("ipspec full name %s, want org.lfedge.eve.common.ipspec", got)
	}
	cc := c.GetCipherContexts()
	if len(cc) != 1 || cc[0].GetContextId() != "ctx1" || cc[0].GetHashScheme() != evepb.HashAlgorithm_HASH_ALGORITHM_SHA256_32BYTES ||
		cc[0].GetKeyExchangeScheme() != evepb.KeyExchangeScheme_KEA_ECDH || cc[0].GetEncryptionScheme() != evepb.EncryptionScheme_SA_AES_256_CFB ||
		string(cc[0].GetDeviceCertHash()) != "\x01" || string(cc[0].GetControllerCertHash()) != "\x02" {
		t.Errorf("cipher contexts: %v", cc)
	}
	cl := c.GetCluster()
	if cl.GetClusterName() != "c" || cl.GetClusterId() != "cid" || cl.GetClusterInterface() != "mgmt0" ||
		cl.GetClusterIpPrefix() != "10.244.244.2/28" || cl.GetJoinServerIp() != "10.244.244.1" ||
		cl.GetClusterType() != evepb.ClusterType_CLUSTER_TYPE_K3S_BASE || cl.GetTieBreakerNodeId() != "tb" {
		t.Errorf("cluster: %v", cl)
	}
	if cl.GetHaScheme() != evepb.HAScheme_HA_SCHEME_K3S_EMBEDDED {
		t.Errorf("ha_scheme = %v, want HA_SCHEME_K3S_EMBEDDED", cl.GetHaScheme())
	}
	if tok := cl.GetEncryptedClusterToken(); tok.GetCipherContextId() != "ctx1" || string(tok.GetInitialValue()) != "0123456789abcdef" || string(tok.GetCipherData()) != "\x01\x02" {
		t.Errorf("token: %v", tok)
	}
	lb := cl.GetLoadBalancerService().GetInterfaces()
	if len(lb) != 1 || lb[0].GetInterfaceName() != "eth1" || strings.Join(lb[0].GetAddressCidrs(), ",") != "192.168.1.24/29" {
		t.Errorf("load balancer: %v", lb)
	}
	// Everything in the vector is declared by us: nothing is left unknown.
	for _, m := range []proto.Message{&c, n, ip, cl, cl.GetEncryptedClusterToken(), cl.GetLoadBalancerService()} {
		if u := m.ProtoReflect().GetUnknown(); len(u) != 0 {
			t.Errorf("%s: %d bytes of unknown fields", m.ProtoReflect().Descriptor().FullName(), len(u))
		}
	}
}
