package evesim

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lf-edge/evelet/eve/evecfg"
	"github.com/lf-edge/evelet/eve/evecfg/evepb"
	"github.com/lf-edge/evelet/eve/evecrypt"
	"github.com/lf-edge/evelet/eve/pubsub"
)

var testToken = "K10" + strings.Repeat("0a", 32) + "::abcdef.0123456789abcdef"

func testCluster() Cluster {
	return Cluster{
		Name:            "Edge Cluster",
		ID:              "3b1c2f8e-2f7a-4c59-9d3e-0a1b2c3d4e5f",
		JoinServerIP:    "10.1.0.10",
		ClusterIPPrefix: "10.1.0.5/24",
		Token:           testToken,
		ConfigItems: map[string]string{
			"evelet.apiserver-url":           "https://127.0.0.1:31234",
			"evelet.policy.allow-privileged": "true",
		},
	}
}

func newDevice(t *testing.T) *Device {
	t.Helper()
	d, err := New(t.TempDir(), "My EVE Device 01")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// controllerCerts reads the ControllerCert items the way an EVE-side reader
// would: every *.json in the directory, key = hex(CertHash), Cert as Adam
// sends it (PEM without the trailing newline), CertHash = the first 16
// bytes of sha256 over exactly the Cert bytes.
func controllerCerts(t *testing.T, d *Device) ([]ControllerCert, map[int32]ControllerCert) {
	t.Helper()
	ents, err := os.ReadDir(d.ControllerCertDir())
	if err != nil {
		t.Fatal(err)
	}
	var recs []ControllerCert
	byType := map[int32]ControllerCert{}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			t.Errorf("unexpected file %s in the ControllerCert topic", e.Name())
			continue
		}
		b, err := os.ReadFile(filepath.Join(d.ControllerCertDir(), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		var cc ControllerCert
		if err := json.Unmarshal(b, &cc); err != nil {
			t.Fatalf("%s: %v", e.Name(), err)
		}
		if want := hex.EncodeToString(cc.CertHash) + ".json"; e.Name() != want {
			t.Errorf("file %s, want key %s", e.Name(), want)
		}
		if _, err := evecrypt.ParseControllerCert(cc.Cert); err != nil {
			t.Fatalf("%s: Cert: %v", e.Name(), err)
		}
		sum := sha256.Sum256(cc.Cert)
		if bytes.HasSuffix(cc.Cert, []byte("\n")) || !bytes.Equal(cc.CertHash, sum[:16]) {
			t.Errorf("%s: not shaped as Adam makes it", e.Name())
		}
		recs = append(recs, cc)
		byType[cc.Type] = cc
	}
	return recs, byType
}

func loadCheckpoint(t *testing.T, d *Device) *evecfg.Checkpoint {
	t.Helper()
	cp, err := evecfg.LoadCheckpoint(d.Root.Checkpoint())
	if err != nil {
		t.Fatal(err)
	}
	if cp.PrimaryErr != nil {
		t.Fatalf("checkpoint fell back to .bak: %v", cp.PrimaryErr)
	}
	if err := cp.VerifySignature(d.SigningCert); err != nil {
		t.Fatalf("VerifySignature: %v", err)
	}
	return cp
}

func readClusterConfig(t *testing.T, d *Device) pubsub.EdgeNodeClusterConfig {
	t.Helper()
	enc, ok, err := pubsub.Read[pubsub.EdgeNodeClusterConfig](d.ClusterConfigPath())
	if err != nil || !ok {
		t.Fatalf("EdgeNodeClusterConfig: ok=%v err=%v", ok, err)
	}
	return enc
}

func pubsubBlock(enc pubsub.EdgeNodeClusterConfig) *evepb.CipherBlock {
	return &evepb.CipherBlock{
		CipherContextId: enc.CipherToken.CipherContextID,
		InitialValue:    enc.CipherToken.InitialValue,
		CipherData:      enc.CipherToken.CipherData,
		ClearTextSha256: enc.CipherToken.ClearTextHash,
	}
}

// decrypt decrypts block using only what is on disk: the context from the
// checkpoint, the device key file, the controller certs from ControllerCert.
func decrypt(t *testing.T, d *Device, cp *evecfg.Checkpoint, block *evepb.CipherBlock) (*evepb.EncryptionBlock, error) {
	t.Helper()
	ctx, err := cp.CipherContext(block.GetCipherContextId())
	if err != nil {
		return nil, err
	}
	key, err := evecrypt.LoadDeviceKey(d.Root.DeviceECDHKey())
	if err != nil {
		t.Fatal(err)
	}
	certs, _ := controllerCerts(t, d)
	cert, err := evecrypt.FindControllerCert(certs, ctx.GetControllerCertHash())
	if err != nil {
		t.Fatal(err)
	}
	return evecrypt.DecryptEncryptionBlock(block, ctx, key, cert)
}

func TestNewLayout(t *testing.T) {
	d := newDevice(t)
	if !pubsub.UUID(d.UUID).Valid() || d.UUID[14] != '4' {
		t.Errorf("UUID %q is not a v4 UUID", d.UUID)
	}
	if d.Root.Run != filepath.Join(d.Dir(), "run") || d.Root.Persist != filepath.Join(d.Dir(), "persist") {
		t.Errorf("Root = %+v", d.Root)
	}

	// Device key and certificate.
	st, err := os.Stat(d.Root.DeviceECDHKey())
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", st.Mode().Perm())
	}
	kb, _ := os.ReadFile(d.Root.DeviceECDHKey())
	if !bytes.HasPrefix(kb, []byte("-----BEGIN EC PRIVATE KEY-----")) {
		t.Errorf("key file is not an EC PRIVATE KEY PEM")
	}
	key, err := evecrypt.LoadDeviceKey(d.Root.DeviceECDHKey())
	if err != nil || !key.Equal(d.DeviceKey) {
		t.Fatalf("LoadDeviceKey: %v, equal=%v", err, key != nil && key.Equal(d.DeviceKey))
	}
	dc, err := evecrypt.LoadCertificates(d.DeviceCertPath())
	if err != nil || len(dc) != 1 || !dc[0].Equal(d.DeviceCert) {
		t.Fatalf("device cert: %v", err)
	}
	if d.DeviceCertPath() != filepath.Join(d.Root.Persist, "certs", "ecdh.cert.pem") {
		t.Errorf("DeviceCertPath = %s", d.DeviceCertPath())
	}

	// Controller certificates: under <Run>, as EVE 16.12.0 and later publish them.
	if d.ControllerCertDir() != filepath.Join(d.Root.Run, "zedagent", "ControllerCert") {
		t.Errorf("ControllerCertDir = %s", d.ControllerCertDir())
	}
	recs, byType := controllerCerts(t, d)
	if len(recs) != 2 {
		t.Fatalf("%d controller certs, want 2", len(recs))
	}
	for typ, want := range map[int32]*x509.Certificate{CertTypeControllerSigning: d.SigningCert, CertTypeControllerECDHExchange: d.ControllerCert} {
		r, ok := byType[typ]
		if !ok {
			t.Errorf("Type %d missing", typ)
			continue
		}
		if got, err := evecrypt.FindControllerCert(recs, r.CertHash); err != nil || !got.Equal(want) {
			t.Errorf("Type %d: %v", typ, err)
		}
		if r.HashAlgo != int32(evepb.HashAlgorithm_HASH_ALGORITHM_SHA256_16BYTES) || len(r.CertHash) != 16 {
			t.Errorf("HashAlgo %d with a %d-byte hash", r.HashAlgo, len(r.CertHash))
		}
	}
	if !bytes.Equal(byType[CertTypeControllerECDHExchange].CertHash, d.ControllerCertHash()) {
		t.Errorf("ControllerCertHash does not name the ECDH record")
	}
	// The JSON as zedagent writes it: Go field names, []byte as base64.
	raw, _ := os.ReadFile(filepath.Join(d.ControllerCertDir(), hex.EncodeToString(d.ControllerCertHash())+".json"))
	var generic map[string]any
	if err := json.Unmarshal(raw, &generic); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"HashAlgo", "Type", "Cert", "CertHash"} {
		if _, ok := generic[k]; !ok {
			t.Errorf("ControllerCert JSON lacks %s: %s", k, raw)
		}
	}

	// EdgeNodeInfo: under <Run> only.
	info, ok, err := pubsub.Read[pubsub.EdgeNodeInfo](d.Root.EdgeNodeInfo())
	if err != nil || !ok {
		t.Fatalf("EdgeNodeInfo: %v %v", ok, err)
	}
	if info.DeviceName != "My EVE Device 01" || info.DeviceID != d.UUID || info.ProjectName != ProjectName || info.EnterpriseName != EnterpriseName {
		t.Errorf("EdgeNodeInfo = %+v", info)
	}
	for _, p := range []string{d.Root.EdgeNodeInfoPersistent(), d.Root.EdgeNodeClusterConfigPersistent(), d.Root.ControllerCertDirPersistent()} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a current EVE has no %s: %v", p, err)
		}
	}
	if rel, _ := os.ReadFile(d.Root.EVERelease()); string(rel) != DefaultOSVersion+"\n" {
		t.Errorf("eve-release %q", rel)
	}

	// ZbootStatus.
	za, ok, err := pubsub.Read[pubsub.ZbootStatus](d.Root.ZbootStatus(pubsub.PartitionIMGA))
	if err != nil || !ok || za.PartitionState != pubsub.PartitionStateActive || !za.CurrentPartition || za.ShortVersion != DefaultOSVersion {
		t.Errorf("IMGA = %+v (%v %v)", za, ok, err)
	}
	zb, ok, err := pubsub.Read[pubsub.ZbootStatus](d.Root.ZbootStatus(pubsub.PartitionIMGB))
	if err != nil || !ok || zb.PartitionState != pubsub.PartitionStateUnused || zb.CurrentPartition {
		t.Errorf("IMGB = %+v (%v %v)", zb, ok, err)
	}

	// Initial checkpoint: version 1, no cluster, no .bak yet, no cluster config published.
	cp := loadCheckpoint(t, d)
	if cp.DeviceUUID() != d.UUID || cp.Config.GetId().GetVersion() != "1" || d.ConfigVersion() != "1" {
		t.Errorf("id = %v", cp.Config.GetId())
	}
	if cp.Config.GetDeviceName() != "My EVE Device 01" || cp.Cluster() != nil {
		t.Errorf("config = %v", cp.Config)
	}
	if !cp.SenderCert.Equal(d.SigningCert) || !bytes.Equal(cp.Auth.GetSenderCertHash(), evecfg.CertHash(d.SigningCert)) || len(cp.Auth.GetSignatureHash()) != 64 {
		t.Errorf("auth container: sender cert/hash/signature not as expected")
	}
	if err := cp.VerifySignature(d.ControllerCert); !errors.Is(err, evecfg.ErrBadSignature) {
		t.Errorf("verify with the wrong cert: %v", err)
	}
	if _, err := os.Stat(d.CheckpointBackup()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists after New", d.CheckpointBackup())
	}
	if enc := readClusterConfig(t, d); !enc.Initialized || enc.Valid {
		t.Errorf("EdgeNodeClusterConfig after New: %+v, want Initialized only", enc)
	}
}

// TestOldEVELayoutAndReboot: an OldEVE device publishes under
// <Persist>/status; rebooting into a current release empties <Run>, leaves
// those copies behind, and publishes under <Run> once zedagent runs.
func TestOldEVELayoutAndReboot(t *testing.T) {
	d, err := NewWithOptions(t.TempDir(), "old", Options{OldEVE: true})
	if err != nil {
		t.Fatal(err)
	}
	if d.OSVersion != OldOSVersion || d.ControllerCertDir() != d.Root.ControllerCertDirPersistent() ||
		d.ClusterConfigPath() != d.Root.EdgeNodeClusterConfigPersistent() || d.EdgeNodeInfoPath() != d.Root.EdgeNodeInfoPersistent() {
		t.Fatalf("old EVE paths: %s %s %s %s", d.OSVersion, d.ControllerCertDir(), d.ClusterConfigPath(), d.EdgeNodeInfoPath())
	}
	if _, err := os.Stat(d.ClusterConfigPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("old EVE without a cluster publishes no EdgeNodeClusterConfig: %v", err)
	}
	if err := d.SetCluster(testCluster()); err != nil {
		t.Fatal(err)
	}
	if recs, _ := controllerCerts(t, d); len(recs) != 2 {
		t.Fatalf("%d certs", len(recs))
	}
	if _, err := os.Stat(d.Root.ControllerCertDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("old EVE has no %s", d.Root.ControllerCertDir())
	}
	if err := d.Reboot(Options{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{d.Root.EdgeNodeClusterConfig(), d.Root.EdgeNodeInfo(), d.Root.ControllerCertDir()} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s before zedagent publishes: %v", p, err)
		}
	}
	if enc, ok, err := pubsub.Read[pubsub.EdgeNodeClusterConfig](d.Root.EdgeNodeClusterConfigPersistent()); !ok || err != nil || !enc.Valid {
		t.Errorf("old copy not left behind: %v %v", ok, err)
	}
	if rel, _ := os.ReadFile(d.Root.EVERelease()); string(rel) != DefaultOSVersion+"\n" {
		t.Errorf("eve-release %q", rel)
	}
	if err := d.PublishZedagent(); err != nil {
		t.Fatal(err)
	}
	if enc := readClusterConfig(t, d); !enc.Valid || enc.ClusterName != testCluster().Name {
		t.Errorf("after PublishZedagent: %+v", enc)
	}
	if recs, _ := controllerCerts(t, d); len(recs) != 2 || d.ControllerCertDir() != d.Root.ControllerCertDir() {
		t.Errorf("certs under %s: %d", d.ControllerCertDir(), len(recs))
	}
}

func TestSetClusterRoundTrip(t *testing.T) {
	d := newDevice(t)
	c := testCluster()
	c.ClusterInterface = "eth1"
	c.ClusterIPPrefix = "10.1.0.5/24"
	if err := d.SetCluster(c); err != nil {
		t.Fatal(err)
	}

	cp := loadCheckpoint(t, d)
	if v := cp.Config.GetId().GetVersion(); v != "2" || d.ConfigVersion() != "2" {
		t.Errorf("version %q, want 2", v)
	}
	cl := cp.Cluster()
	if cl.GetClusterName() != c.Name || cl.GetClusterId() != c.ID || cl.GetJoinServerIp() != c.JoinServerIP ||
		!cl.GetIsWorkerNode() || cl.GetClusterType() != evepb.ClusterType_CLUSTER_TYPE_K3S_BASE ||
		cl.GetClusterInterface() != "eth1" || cl.GetClusterIpPrefix() != "10.1.0.5/24" {
		t.Errorf("cluster = %v", cl)
	}
	items := cp.ConfigItems()
	if len(items) != 2 || items["evelet.apiserver-url"] != "https://127.0.0.1:31234" || items["evelet.policy.allow-privileged"] != "true" {
		t.Errorf("config items = %v", items)
	}
	if len(cp.Config.GetCipherContexts()) != 1 || cp.Config.GetCipherContexts()[0].GetContextId() != DefaultCipherContextID {
		t.Errorf("cipher contexts = %v", cp.Config.GetCipherContexts())
	}
	// The previous checkpoint is the last known good one.
	bak, err := evecfg.LoadCheckpoint(d.CheckpointBackup())
	if err != nil || bak.Config.GetId().GetVersion() != "1" || bak.Cluster() != nil {
		t.Errorf(".bak: %v %v", err, bak)
	}

	// Token from the checkpoint's block.
	eb, err := decrypt(t, d, cp, cl.GetEncryptedClusterToken())
	if err != nil || eb.GetClusterToken() != testToken {
		t.Fatalf("checkpoint decrypt: %v %q", err, eb.GetClusterToken())
	}
	tok, err := evecrypt.ParseTokenPayload(eb.GetClusterToken())
	if err != nil || tok.Kind != "k3s-secure" {
		t.Errorf("ParseTokenPayload: %v %v", err, tok)
	}

	// Token from the published block (context from the checkpoint).
	enc := readClusterConfig(t, d)
	eb, err = decrypt(t, d, cp, pubsubBlock(enc))
	if err != nil || eb.GetClusterToken() != testToken {
		t.Fatalf("pubsub decrypt: %v", err)
	}
	if !enc.Initialized || !enc.Valid || enc.ClusterName != c.Name || enc.ClusterID.UUID != pubsub.UUID(c.ID) ||
		!enc.IsWorkerNode || enc.JoinServerIP.String() != c.JoinServerIP || enc.ClusterType != pubsub.ClusterTypeK3sBase ||
		enc.ClusterInterface != "eth1" || enc.ClusterIPPrefix.String() != "10.1.0.5/24" || enc.BootstrapNode {
		t.Errorf("EdgeNodeClusterConfig = %+v", enc)
	}
	ct := enc.CipherToken
	if !ct.IsCipher || ct.CipherBlockID != c.ID || ct.CipherContextID != DefaultCipherContextID || ct.CipherContext == nil ||
		ct.CipherContext.KeyExchangeScheme != pubsub.KeyExchangeSchemeECDH || ct.CipherContext.EncryptionScheme != pubsub.EncryptionSchemeAES256CFB ||
		!bytes.Equal(ct.CipherContext.ControllerCertHash, d.ControllerCertHash()) ||
		!bytes.Equal(ct.CipherContext.DeviceCertHash, evecfg.CertHash(d.DeviceCert)) || ct.HasError() {
		t.Errorf("CipherToken = %+v", ct)
	}
	if !bytes.Equal(ct.CipherData, cl.GetEncryptedClusterToken().GetCipherData()) {
		t.Errorf("published block differs from the checkpoint's")
	}
	// The file uses current EVE's key for the cipher data.
	raw, _ := os.ReadFile(d.Root.EdgeNodeClusterConfig())
	if !bytes.Contains(raw, []byte(`"pubsub-large-CipherData":"`)) || bytes.Contains(raw, []byte(testToken)) {
		t.Errorf("unexpected file content: %s", raw)
	}
	got, ok := d.Cluster()
	if !ok || got.ID != c.ID || got.CipherContextID != DefaultCipherContextID {
		t.Errorf("Cluster() = %+v %v", got, ok)
	}
}

func TestSetClusterDefaultsAndBootstrapNode(t *testing.T) {
	d := newDevice(t)
	if err := d.SetCluster(Cluster{Name: "c", JoinServerIP: "10.1.0.5", ClusterIPPrefix: "10.1.0.5/24", Token: testToken, CipherContextID: "ctx-7"}); err != nil {
		t.Fatal(err)
	}
	got, _ := d.Cluster()
	if !pubsub.UUID(got.ID).Valid() {
		t.Errorf("generated cluster ID %q", got.ID)
	}
	enc := readClusterConfig(t, d)
	if enc.ClusterID.UUID != pubsub.UUID(got.ID) || !enc.BootstrapNode || enc.CipherToken.CipherContextID != "ctx-7" {
		t.Errorf("EdgeNodeClusterConfig = %+v", enc)
	}
	cp := loadCheckpoint(t, d)
	if eb, err := decrypt(t, d, cp, pubsubBlock(enc)); err != nil || eb.GetClusterToken() != testToken {
		t.Fatalf("decrypt: %v", err)
	}
	for _, bad := range []Cluster{{ID: "not-a-uuid", ClusterIPPrefix: "10.1.0.5/24"}, {JoinServerIP: "10.1.0.x", ClusterIPPrefix: "10.1.0.5/24"}, {ClusterIPPrefix: "10.1.0.5"}, {}} {
		if err := d.SetCluster(bad); err == nil {
			t.Errorf("SetCluster(%+v) succeeded", bad)
		}
	}
	if d.ConfigVersion() != "2" {
		t.Errorf("failed SetCluster calls changed the version to %s", d.ConfigVersion())
	}
}

func TestSetConfigItems(t *testing.T) {
	d := newDevice(t)
	if err := d.SetCluster(testCluster()); err != nil {
		t.Fatal(err)
	}
	before := loadCheckpoint(t, d)
	encBefore, _ := os.ReadFile(d.Root.EdgeNodeClusterConfig())
	if err := d.SetConfigItems(map[string]string{"evelet.apiserver-url": "https://10.0.0.1:6443"}); err != nil {
		t.Fatal(err)
	}
	cp := loadCheckpoint(t, d)
	if cp.Config.GetId().GetVersion() != "3" {
		t.Errorf("version %s, want 3", cp.Config.GetId().GetVersion())
	}
	if items := cp.ConfigItems(); len(items) != 1 || items["evelet.apiserver-url"] != "https://10.0.0.1:6443" {
		t.Errorf("items = %v", items)
	}
	if !bytes.Equal(cp.Cluster().GetEncryptedClusterToken().GetCipherData(), before.Cluster().GetEncryptedClusterToken().GetCipherData()) ||
		cp.Cluster().GetClusterId() != before.Cluster().GetClusterId() {
		t.Errorf("cluster changed")
	}
	if eb, err := decrypt(t, d, cp, cp.Cluster().GetEncryptedClusterToken()); err != nil || eb.GetClusterToken() != testToken {
		t.Errorf("decrypt: %v", err)
	}
	if bak, err := evecfg.LoadCheckpoint(d.CheckpointBackup()); err != nil || bak.Config.GetId().GetVersion() != "2" {
		t.Errorf(".bak: %v", err)
	}
	if encAfter, _ := os.ReadFile(d.Root.EdgeNodeClusterConfig()); !bytes.Equal(encBefore, encAfter) {
		t.Errorf("EdgeNodeClusterConfig changed")
	}
	if c, _ := d.Cluster(); len(c.ConfigItems) != 1 {
		t.Errorf("Cluster().ConfigItems = %v", c.ConfigItems)
	}
}

func TestRemoveCluster(t *testing.T) {
	d := newDevice(t)
	if err := d.SetCluster(testCluster()); err != nil {
		t.Fatal(err)
	}
	if err := d.RemoveCluster(); err != nil {
		t.Fatal(err)
	}
	enc := readClusterConfig(t, d)
	if enc.Valid || !enc.Initialized || enc.ClusterName != "" || enc.CipherToken.IsCipher {
		t.Errorf("EdgeNodeClusterConfig = %+v", enc)
	}
	cp := loadCheckpoint(t, d)
	if cp.Cluster() != nil || len(cp.Config.GetCipherContexts()) != 0 || cp.Config.GetId().GetVersion() != "3" {
		t.Errorf("config = %v", cp.Config)
	}
	if len(cp.ConfigItems()) != 2 {
		t.Errorf("config items dropped: %v", cp.ConfigItems())
	}
	if _, ok := d.Cluster(); ok {
		t.Errorf("Cluster() still set")
	}
}

func TestPublishZedkubeToken(t *testing.T) {
	d := newDevice(t)
	if err := d.PublishZedkubeToken(testToken); err != nil {
		t.Fatal(err)
	}
	st, ok, err := pubsub.Read[pubsub.EdgeNodeClusterStatus](d.Root.EdgeNodeClusterStatus())
	if err != nil || !ok || st.EncryptedClusterToken != testToken || st.ClusterName != "" {
		t.Fatalf("status = %+v %v %v", st, ok, err)
	}
	c := testCluster()
	if err := d.SetCluster(c); err != nil {
		t.Fatal(err)
	}
	if err := d.PublishZedkubeToken(testToken); err != nil {
		t.Fatal(err)
	}
	st, _, _ = pubsub.Read[pubsub.EdgeNodeClusterStatus](d.Root.EdgeNodeClusterStatus())
	if st.ClusterName != c.Name || st.ClusterID.UUID != pubsub.UUID(c.ID) || st.JoinServerIP.String() != c.JoinServerIP || !st.IsWorkerNode {
		t.Errorf("status = %+v", st)
	}
}

func TestFaultRawClusterConfig(t *testing.T) {
	d := newDevice(t)
	if err := d.WriteRawClusterConfig([]byte(`{"Valid": true, "ClusterName": `)); err != nil {
		t.Fatal(err)
	}
	_, ok, err := pubsub.Read[pubsub.EdgeNodeClusterConfig](d.Root.EdgeNodeClusterConfig())
	var fe *pubsub.FileError
	if !ok || !errors.As(err, &fe) || fe.Offset < 0 {
		t.Fatalf("Read = %v %v, want a FileError with an offset", ok, err)
	}
}

func TestFaultTruncatedCheckpoint(t *testing.T) {
	d := newDevice(t)
	if err := d.SetCluster(testCluster()); err != nil {
		t.Fatal(err)
	}
	if err := d.SetConfigItems(map[string]string{"a": "b"}); err != nil {
		t.Fatal(err)
	}
	full, _ := os.ReadFile(d.Root.Checkpoint())
	if err := d.TruncateCheckpoint(len(full) / 2); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(d.Root.Checkpoint())
	if len(data) != len(full)/2 {
		t.Fatalf("truncated to %d bytes", len(data))
	}
	if _, err := evecfg.ParseCheckpoint(data); err == nil {
		t.Fatal("ParseCheckpoint accepted a truncated checkpoint")
	}
	cp, err := evecfg.LoadCheckpoint(d.Root.Checkpoint())
	if err != nil {
		t.Fatal(err)
	}
	if cp.PrimaryErr == nil || cp.Path != d.CheckpointBackup() || cp.Config.GetId().GetVersion() != "2" {
		t.Errorf("fallback: path %s, primary %v, version %s", cp.Path, cp.PrimaryErr, cp.Config.GetId().GetVersion())
	}
	// The .bak still carries the cluster and its token decrypts.
	if err := cp.VerifySignature(d.SigningCert); err != nil {
		t.Fatal(err)
	}
	if eb, err := decrypt(t, d, cp, cp.Cluster().GetEncryptedClusterToken()); err != nil || eb.GetClusterToken() != testToken {
		t.Errorf("decrypt from .bak: %v", err)
	}
	if err := d.TruncateCheckpoint(len(data) + 1); err == nil {
		t.Errorf("TruncateCheckpoint beyond the end succeeded")
	}

	// A corrupt lastconfig never becomes the .bak.
	if err := d.SetConfigItems(nil); err != nil {
		t.Fatal(err)
	}
	if bak, err := evecfg.LoadCheckpoint(d.CheckpointBackup()); err != nil || bak.Config.GetId().GetVersion() != "2" {
		t.Errorf(".bak after rewriting over a corrupt lastconfig: %v", err)
	}
	loadCheckpoint(t, d)

	// Without the .bak both fail.
	if err := d.TruncateCheckpoint(3); err != nil {
		t.Fatal(err)
	}
	if err := d.RemoveCheckpointBackup(); err != nil {
		t.Fatal(err)
	}
	if err := d.RemoveCheckpointBackup(); err != nil {
		t.Errorf("second RemoveCheckpointBackup: %v", err)
	}
	_, err = evecfg.LoadCheckpoint(d.Root.Checkpoint())
	var le *evecfg.LoadError
	if !errors.As(err, &le) || le.NotExist() || !errors.Is(le.BackupErr, os.ErrNotExist) {
		t.Errorf("LoadCheckpoint = %v, want a LoadError", err)
	}
}

func TestFaultWrongCipherContext(t *testing.T) {
	d := newDevice(t)
	if err := d.SetClusterWithCipherContextID(testCluster(), "ctx-missing"); err != nil {
		t.Fatal(err)
	}
	cp := loadCheckpoint(t, d)
	block := cp.Cluster().GetEncryptedClusterToken()
	if block.GetCipherContextId() != "ctx-missing" {
		t.Fatalf("block names %q", block.GetCipherContextId())
	}
	if _, err := cp.CipherContext("ctx-missing"); err == nil {
		t.Fatal("context ctx-missing found in the config")
	}
	if _, err := cp.CipherContext(DefaultCipherContextID); err != nil {
		t.Fatalf("config lacks %s: %v", DefaultCipherContextID, err)
	}
	enc := readClusterConfig(t, d)
	if enc.CipherToken.CipherContextID != "ctx-missing" || !enc.CipherToken.IsCipher || enc.CipherToken.CipherContext != nil {
		t.Errorf("CipherToken = %+v", enc.CipherToken)
	}
	if _, err := decrypt(t, d, cp, pubsubBlock(enc)); err == nil {
		t.Error("decrypt succeeded")
	}
	// Even handed the config's only context, decryption refuses the mismatch.
	ctx, _ := cp.CipherContext(DefaultCipherContextID)
	certs, _ := controllerCerts(t, d)
	cert, _ := evecrypt.FindControllerCert(certs, ctx.GetControllerCertHash())
	if _, err := evecrypt.DecryptEncryptionBlock(block, ctx, d.DeviceKey, cert); err == nil {
		t.Error("decrypt with a mismatched context succeeded")
	}
	for _, id := range []string{"", DefaultCipherContextID} {
		if err := d.SetClusterWithCipherContextID(testCluster(), id); err == nil {
			t.Errorf("SetClusterWithCipherContextID(%q) succeeded", id)
		}
	}
}

func TestFaultReplaceDeviceKey(t *testing.T) {
	d := newDevice(t)
	if err := d.SetCluster(testCluster()); err != nil {
		t.Fatal(err)
	}
	if err := d.ReplaceDeviceKey(); err != nil {
		t.Fatal(err)
	}
	k, err := evecrypt.LoadDeviceKey(d.Root.DeviceECDHKey())
	if err != nil || k.Equal(d.DeviceKey) {
		t.Fatalf("key file: %v, unchanged=%v", err, k != nil && k.Equal(d.DeviceKey))
	}
	cp := loadCheckpoint(t, d)
	for name, block := range map[string]*evepb.CipherBlock{
		"checkpoint": cp.Cluster().GetEncryptedClusterToken(),
		"pubsub":     pubsubBlock(readClusterConfig(t, d)),
	} {
		if _, err := decrypt(t, d, cp, block); !errors.Is(err, evecrypt.ErrHashMismatch) {
			t.Errorf("%s: decrypt = %v, want ErrHashMismatch", name, err)
		}
	}
	if err := d.RestoreDeviceKey(); err != nil {
		t.Fatal(err)
	}
	if eb, err := decrypt(t, d, cp, cp.Cluster().GetEncryptedClusterToken()); err != nil || eb.GetClusterToken() != testToken {
		t.Errorf("after RestoreDeviceKey: %v", err)
	}
}

func TestFaultTamperedHash(t *testing.T) {
	d := newDevice(t)
	if err := d.SetClusterTamperedHash(testCluster()); err != nil {
		t.Fatal(err)
	}
	cp := loadCheckpoint(t, d)
	enc := readClusterConfig(t, d)
	for name, block := range map[string]*evepb.CipherBlock{
		"checkpoint": cp.Cluster().GetEncryptedClusterToken(),
		"pubsub":     pubsubBlock(enc),
	} {
		if _, err := decrypt(t, d, cp, block); !errors.Is(err, evecrypt.ErrHashMismatch) {
			t.Errorf("%s: decrypt = %v, want ErrHashMismatch", name, err)
		}
	}
	// Only the hash is wrong: a correct SetCluster afterwards decrypts.
	if err := d.SetCluster(testCluster()); err != nil {
		t.Fatal(err)
	}
	cp = loadCheckpoint(t, d)
	if eb, err := decrypt(t, d, cp, pubsubBlock(readClusterConfig(t, d))); err != nil || eb.GetClusterToken() != testToken {
		t.Errorf("after SetCluster: %v", err)
	}
}

func TestEmptyTokenIsIncompleteBlock(t *testing.T) {
	d := newDevice(t)
	c := testCluster()
	c.Token = ""
	if err := d.SetCluster(c); err != nil {
		t.Fatal(err)
	}
	enc := readClusterConfig(t, d)
	if enc.CipherToken.IsCipher || !enc.CipherToken.HasError() {
		t.Errorf("CipherToken = %+v, want zedagent's incomplete-data error", enc.CipherToken)
	}
}

func TestRestoreUndoesEveryFault(t *testing.T) {
	d := newDevice(t)
	good := testCluster()
	if err := d.SetCluster(good); err != nil {
		t.Fatal(err)
	}
	faults := map[string]func() error{
		"raw":      func() error { return d.WriteRawClusterConfig([]byte("{")) },
		"truncate": func() error { return errors.Join(d.RemoveCheckpointBackup(), d.TruncateCheckpoint(40)) },
		"context":  func() error { return d.SetClusterWithCipherContextID(good, "nope") },
		"key":      d.ReplaceDeviceKey,
		"hash":     func() error { return d.SetClusterTamperedHash(good) },
	}
	for name, fault := range faults {
		if err := fault(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := d.Restore(good); err != nil {
			t.Fatalf("%s: Restore: %v", name, err)
		}
		cp := loadCheckpoint(t, d)
		for where, block := range map[string]*evepb.CipherBlock{
			"checkpoint": cp.Cluster().GetEncryptedClusterToken(),
			"pubsub":     pubsubBlock(readClusterConfig(t, d)),
		} {
			if eb, err := decrypt(t, d, cp, block); err != nil || eb.GetClusterToken() != testToken {
				t.Errorf("%s: %s after Restore: %v", name, where, err)
			}
		}
	}
}
