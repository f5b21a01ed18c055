package evecfg

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/lf-edge/evelet/eve/evecfg/evepb"
)

const (
	vT = protowire.VarintType
	bT = protowire.BytesType
)

// wireFields walks one message's top-level fields and checks that exactly
// the wanted field numbers appear, each with the wanted wire type. It
// returns the raw value of the last occurrence of every length-delimited
// field so a test can descend into sub-messages.
func wireFields(t *testing.T, name string, b []byte, want map[protowire.Number]protowire.Type) map[protowire.Number][]byte {
	t.Helper()
	seen := map[protowire.Number]bool{}
	raw := map[protowire.Number][]byte{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("%s: bad tag: %v", name, protowire.ParseError(n))
		}
		b = b[n:]
		wt, ok := want[num]
		if !ok {
			t.Errorf("%s: unexpected field %d (wire type %d)", name, num, typ)
		} else if wt != typ {
			t.Errorf("%s: field %d has wire type %d, want %d", name, num, typ, wt)
		}
		seen[num] = true
		if typ == bT {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				t.Fatalf("%s: field %d: %v", name, num, protowire.ParseError(m))
			}
			raw[num] = v
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			t.Fatalf("%s: field %d: %v", name, num, protowire.ParseError(m))
		}
		b = b[m:]
	}
	for num := range want {
		if !seen[num] {
			t.Errorf("%s: field %d missing (test message must set every field)", name, num)
		}
	}
	return raw
}

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fullCipherBlock() *evepb.CipherBlock {
	return &evepb.CipherBlock{CipherContextId: "ctx1", InitialValue: []byte("0123456789abcdef"), CipherData: []byte{1, 2, 3}, ClearTextSha256: make([]byte, 32)}
}

func fullConfig() *evepb.EdgeDevConfig {
	ops := &evepb.DeviceOpsCmd{Counter: 3, DesiredState: true, OpsTime: "now"}
	return &evepb.EdgeDevConfig{
		Id:          &evepb.UUIDandVersion{Uuid: "6ba7b810-9dad-11d1-80b4-00c04fd430c8", Version: "7"},
		Reboot:      ops,
		ConfigItems: []*evepb.ConfigItem{{Key: "timer.config.interval", Value: "60"}},
		NetworkInstances: []*evepb.NetworkInstanceConfig{{
			Uuidandversion: &evepb.UUIDandVersion{Uuid: "ni1", Version: "1"},
			Displayname:    "default",
			InstType:       evepb.ZNetworkInstType_ZnetInstLocal,
			Activate:       true,
			Port:           &evepb.Adapter{Type: evepb.PhyIoType_PhyIoNetEth, Name: "uplink", EthVf: &evepb.EthVF{Index: 1, Mac: "02:00:00:00:00:01", VlanId: 5}},
			IpType:         evepb.AddressType_IPV4,
			Ip: &evepb.Ipspec{
				Dhcp: evepb.DHCPType_Static, Subnet: "10.1.0.0/24", Gateway: "10.1.0.1", Domain: "lan", Ntp: "ntp1",
				Dns: []string{"10.1.0.1"}, DhcpRange: &evepb.IpRange{Start: "10.1.0.2", End: "10.1.0.254"}, MoreNtp: []string{"ntp2"},
			},
			Mtu: 1500,
		}},
		CipherContexts: []*evepb.CipherContext{{
			ContextId: "ctx1", HashScheme: evepb.HashAlgorithm_HASH_ALGORITHM_SHA256_32BYTES,
			KeyExchangeScheme: evepb.KeyExchangeScheme_KEA_ECDH, EncryptionScheme: evepb.EncryptionScheme_SA_AES_256_CFB,
			DeviceCertHash: []byte{1}, ControllerCertHash: []byte{2},
		}},
		ControllercertConfighash: "abc",
		MaintenanceMode:          true,
		Baseos:                   &evepb.BaseOS{ContentTreeUuid: "ct1", RetryUpdate: ops, Activate: true, BaseOsVersion: "14.5.1-kvm-amd64"},
		Shutdown:                 ops,
		DeviceName:               "edge-17",
		ProjectName:              "p",
		ProjectId:                "pid",
		EnterpriseName:           "e",
		EnterpriseId:             "eid",
		Cluster: &evepb.EdgeNodeCluster{
			ClusterName: "c", ClusterId: "cid", ClusterInterface: "mgmt0", ClusterIpPrefix: "10.244.244.2/28",
			IsWorkerNode: true, JoinServerIp: "10.244.244.1", EncryptedClusterToken: fullCipherBlock(),
			ClusterType: evepb.ClusterType_CLUSTER_TYPE_REPLICATED_STORAGE, TieBreakerNodeId: "tb",
			HaScheme:                     evepb.HAScheme_HA_SCHEME_K3S_EMBEDDED,
			LoadBalancerService:          &evepb.LoadBalancerService{Interfaces: []*evepb.LoadBalancerInterface{{InterfaceName: "eth1", AddressCidrs: []string{"192.168.1.24/29"}}}},
			MasterNodeUuids:              []string{"m1"},
			EnableNativeK8SOrchestration: true,
		},
	}
}

// TestWireNumbersAndTypes encodes fully populated messages with the
// generated code and checks field numbers AND wire types against the EVE
// interface (docs/eve-config.md, /work/shared/docs/eve-interface.md).
func TestWireNumbersAndTypes(t *testing.T) {
	cfg := fullConfig()
	resp := &evepb.ConfigResponse{Config: cfg, ConfigHash: "h"}
	auth := &evepb.AuthContainer{
		ProtectedPayload: &evepb.AuthBody{Payload: marshal(t, resp)},
		Algo:             evepb.HashAlgorithm_HASH_ALGORITHM_SHA256_32BYTES,
		SenderCertHash:   []byte{1}, SignatureHash: []byte{2}, SenderCert: []byte{3},
	}

	a := wireFields(t, "AuthContainer", marshal(t, auth), map[protowire.Number]protowire.Type{1: bT, 2: vT, 3: bT, 4: bT, 5: bT})
	body := wireFields(t, "AuthBody", a[1], map[protowire.Number]protowire.Type{1: bT})
	r := wireFields(t, "ConfigResponse", body[1], map[protowire.Number]protowire.Type{1: bT, 2: bT})
	c := wireFields(t, "EdgeDevConfig", r[1], map[protowire.Number]protowire.Type{
		1: bT, 9: bT, 11: bT, 16: bT, 19: bT, 22: bT, 24: vT, 26: bT, 34: bT, 35: bT, 36: bT, 37: bT, 38: bT, 39: bT, 43: bT,
	})
	wireFields(t, "UUIDandVersion", c[1], map[protowire.Number]protowire.Type{1: bT, 2: bT})
	wireFields(t, "DeviceOpsCmd", c[9], map[protowire.Number]protowire.Type{2: vT, 3: vT, 4: bT})
	wireFields(t, "ConfigItem", c[11], map[protowire.Number]protowire.Type{1: bT, 2: bT})
	ni := wireFields(t, "NetworkInstanceConfig", c[16], map[protowire.Number]protowire.Type{1: bT, 2: bT, 4: vT, 5: vT, 20: bT, 39: vT, 40: bT, 44: vT})
	ad := wireFields(t, "Adapter", ni[20], map[protowire.Number]protowire.Type{1: vT, 2: bT, 3: bT})
	wireFields(t, "EthVF", ad[3], map[protowire.Number]protowire.Type{1: vT, 2: bT, 3: vT})
	ip := wireFields(t, "ipspec", ni[40], map[protowire.Number]protowire.Type{2: vT, 3: bT, 5: bT, 6: bT, 7: bT, 8: bT, 9: bT, 10: bT})
	wireFields(t, "ipRange", ip[9], map[protowire.Number]protowire.Type{1: bT, 2: bT})
	wireFields(t, "CipherContext", c[19], map[protowire.Number]protowire.Type{1: bT, 2: vT, 3: vT, 4: vT, 5: bT, 6: bT})
	wireFields(t, "BaseOS", c[26], map[protowire.Number]protowire.Type{1: bT, 2: bT, 3: vT, 4: bT})
	cl := wireFields(t, "EdgeNodeCluster", c[43], map[protowire.Number]protowire.Type{
		1: bT, 2: bT, 3: bT, 4: bT, 5: vT, 6: bT, 7: bT, 8: vT, 9: bT, 11: vT, 12: bT, 13: bT, 14: vT,
	})
	wireFields(t, "CipherBlock", cl[7], map[protowire.Number]protowire.Type{1: bT, 2: bT, 3: bT, 4: bT})
	lb := wireFields(t, "LoadBalancerService", cl[12], map[protowire.Number]protowire.Type{1: bT})
	wireFields(t, "LoadBalancerInterface", lb[1], map[protowire.Number]protowire.Type{1: bT, 2: bT})

	eb := &evepb.EncryptionBlock{
		DsAPIKey: "1", DsPassword: "2", WifiUserName: "3", WifiPassword: "4", ProtectedUserData: "5",
		CellularNetUsername: "6", CellularNetPassword: "7", ClusterToken: "8",
		User:          evepb.EncryptionBlockUser_ENCRYPTION_BLOCK_USER_BINARY_ARTIFACT_METADATA,
		EncryptedData: "10", CellularNetAttachUsername: "11", CellularNetAttachPassword: "12",
		GzipRegistrationManifestYaml: []byte{13},
	}
	wireFields(t, "EncryptionBlock", marshal(t, eb), map[protowire.Number]protowire.Type{
		1: bT, 2: bT, 3: bT, 4: bT, 5: bT, 6: bT, 7: bT, 8: bT, 9: vT, 10: bT, 11: bT, 12: bT, 13: bT,
	})
}

// TestWireDecodeHandBuilt builds bytes field by field with protowire, the
// way any other implementation of eve-api would lay them out, and checks
// that our generated types read them back.
func TestWireDecodeHandBuilt(t *testing.T) {
	msg := func(fields ...func([]byte) []byte) []byte {
		var b []byte
		for _, f := range fields {
			b = f(b)
		}
		return b
	}
	str := func(n protowire.Number, s string) func([]byte) []byte {
		return func(b []byte) []byte { return protowire.AppendString(protowire.AppendTag(b, n, bT), s) }
	}
	byt := func(n protowire.Number, v []byte) func([]byte) []byte {
		return func(b []byte) []byte { return protowire.AppendBytes(protowire.AppendTag(b, n, bT), v) }
	}
	vnt := func(n protowire.Number, v uint64) func([]byte) []byte {
		return func(b []byte) []byte { return protowire.AppendVarint(protowire.AppendTag(b, n, vT), v) }
	}

	block := msg(str(1, "ctx1"), byt(2, []byte("iv-iv-iv-iv-iv-!")), byt(3, []byte{9, 9}), byt(4, make([]byte, 32)))
	cluster := msg(str(1, "name"), str(2, "cid"), str(3, "mgmt0"), str(4, "10.244.244.2/28"), vnt(5, 1),
		str(6, "10.244.244.1"), byt(7, block), vnt(8, 2), str(9, "tb"), vnt(10, 1), vnt(11, 1), str(13, "m1"), str(13, "m2"), vnt(14, 1))
	cctx := msg(str(1, "ctx1"), vnt(2, 2), vnt(3, 1), vnt(4, 1), byt(5, []byte{5}), byt(6, []byte{6}))
	ipr := msg(str(1, "10.1.0.2"), str(2, "10.1.0.9"))
	ips := msg(vnt(2, 1), str(3, "10.1.0.0/24"), str(5, "10.1.0.1"), str(6, "lan"), str(7, "ntp"), str(8, "1.1.1.1"), str(8, "8.8.8.8"), byt(9, ipr))
	ni := msg(byt(1, msg(str(1, "ni-uuid"), str(2, "3"))), str(2, "local"), vnt(4, 2), vnt(5, 1), byt(20, msg(vnt(1, 1), str(2, "eth0"))), byt(40, ips), vnt(44, 1400))
	baseos := msg(str(1, "ct"), byt(2, msg(vnt(2, 4))), vnt(3, 1), str(4, "14.5.2"))
	cfg := msg(byt(1, msg(str(1, "dev-uuid"), str(2, "9"))), byt(11, msg(str(1, "k"), str(2, "v"))), byt(16, ni),
		byt(19, cctx), vnt(24, 1), byt(26, baseos), str(35, "edge-1"), byt(43, cluster), str(99, "future field"))
	resp := msg(byt(1, cfg), str(2, "hash"))
	auth := msg(byt(1, msg(byt(1, resp))), vnt(2, 2), byt(3, []byte{0xaa}), byt(4, []byte{0xbb}))

	c, err := ParseCheckpoint(auth)
	if err != nil {
		t.Fatal(err)
	}
	if c.Response.GetConfigHash() != "hash" || c.Auth.GetAlgo() != evepb.HashAlgorithm_HASH_ALGORITHM_SHA256_32BYTES {
		t.Errorf("envelope: %v", c.Auth)
	}
	if c.DeviceUUID() != "dev-uuid" || c.Config.GetDeviceName() != "edge-1" || !c.Config.GetMaintenanceMode() {
		t.Errorf("config: %v", c.Config)
	}
	if c.ConfigItems()["k"] != "v" {
		t.Errorf("config items: %v", c.ConfigItems())
	}
	cl := c.Cluster()
	if cl.GetClusterName() != "name" || cl.GetClusterId() != "cid" || cl.GetClusterInterface() != "mgmt0" ||
		cl.GetClusterIpPrefix() != "10.244.244.2/28" || !cl.GetIsWorkerNode() || cl.GetJoinServerIp() != "10.244.244.1" ||
		cl.GetClusterType() != evepb.ClusterType_CLUSTER_TYPE_REPLICATED_STORAGE || cl.GetTieBreakerNodeId() != "tb" ||
		len(cl.GetMasterNodeUuids()) != 2 || !cl.GetEnableNativeK8SOrchestration() ||
		cl.GetHaScheme() != evepb.HAScheme_HA_SCHEME_K3S_EMBEDDED {
		t.Errorf("cluster: %v", cl)
	}
	if len(cl.ProtoReflect().GetUnknown()) == 0 {
		t.Errorf("undeclared cluster field 10 should be kept as an unknown field")
	}
	if b := cl.GetEncryptedClusterToken(); b.GetCipherContextId() != "ctx1" || string(b.GetInitialValue()) != "iv-iv-iv-iv-iv-!" || len(b.GetClearTextSha256()) != 32 {
		t.Errorf("cipher block: %v", b)
	}
	cc, err := c.CipherContext("ctx1")
	if err != nil || cc.GetKeyExchangeScheme() != evepb.KeyExchangeScheme_KEA_ECDH || cc.GetEncryptionScheme() != evepb.EncryptionScheme_SA_AES_256_CFB ||
		cc.GetHashScheme() != evepb.HashAlgorithm_HASH_ALGORITHM_SHA256_32BYTES || cc.GetControllerCertHash()[0] != 6 {
		t.Errorf("cipher context: %v %v", cc, err)
	}
	n := c.Config.GetNetworkInstances()[0]
	if n.GetInstType() != evepb.ZNetworkInstType_ZnetInstLocal || !n.GetActivate() || n.GetPort().GetName() != "eth0" ||
		n.GetIp().GetSubnet() != "10.1.0.0/24" || n.GetIp().GetGateway() != "10.1.0.1" || len(n.GetIp().GetDns()) != 2 ||
		n.GetIp().GetDhcpRange().GetEnd() != "10.1.0.9" || n.GetMtu() != 1400 || n.GetUuidandversion().GetUuid() != "ni-uuid" {
		t.Errorf("network instance: %v", n)
	}
	if b := c.Config.GetBaseos(); b.GetContentTreeUuid() != "ct" || b.GetRetryUpdate().GetCounter() != 4 || !b.GetActivate() || b.GetBaseOsVersion() != "14.5.2" {
		t.Errorf("baseos: %v", b)
	}
	// Unknown fields survive a round trip unchanged.
	again, err := proto.Marshal(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	var back evepb.EdgeDevConfig
	if err := proto.Unmarshal(again, &back); err != nil || !proto.Equal(&back, c.Config) {
		t.Errorf("round trip lost data: %v", err)
	}
}
