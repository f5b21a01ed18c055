// Package evesim simulates the EVE side of a device for tests and the demo:
// it writes exactly the files EVE's agents (zedagent, baseosmgr, zedkube)
// and the controller would leave on a device, so evelet's EVE source can be
// exercised with EVE-side inputs only. Nothing here reads evelet's output.
//
// By default the device behaves like a current EVE (16.12.0 and later):
// zedagent publishes ControllerCert, EdgeNodeInfo and EdgeNodeClusterConfig
// under <Run> only (pillar cmd/zedagent/zedagent.go, Persistent: false).
// Other releases publish some of them under <Persist>/status, by release
// line (layoutOf); Options.OldEVE forces the oldest layout (all three
// persistent). Reboot switches between layouts the way an upgrade does:
// <Run> is emptied, <Persist> (with any old copies) stays.
//
// On-disk layout, relative to the simulator's directory (Root.Run = <dir>/run,
// Root.Persist = <dir>/persist); <Z> is run/zedagent on a current EVE and
// persist/status/zedagent where the release publishes the topic persistently:
//
//	run/eve-release                   the running version (EVE's init copies /etc/eve-release there)
//	run/eve-hv-type                   the build flavour, the version's <HV> ("kvm", "k", ...; init's 009-id copies /etc/eve-hv-type)
//	persist/certs/ecdh.key.pem        device ECDH key, PEM "EC PRIVATE KEY" (SEC 1), P-256, mode 0600
//	persist/certs/ecdh.cert.pem       device ECDH certificate, PEM
//	<Z>/ControllerCert/<hex CertHash>.json
//	                                  one pubsub item per controller certificate (types.ControllerCert),
//	                                  shaped as Adam makes them: PEM without its trailing newline,
//	                                  CertHash = first 16 bytes of sha256 over exactly those bytes
//	<Z>/EdgeNodeInfo/global.json      EdgeNodeInfo
//	<Z>/EdgeNodeClusterConfig/global.json   (after SetCluster / RemoveCluster)
//	persist/checkpoint/lastconfig     signed AuthContainer{ConfigResponse{EdgeDevConfig}}
//	persist/checkpoint/lastconfig.bak the previous (last known good) checkpoint
//	run/baseosmgr/ZbootStatus/IMGA.json, IMGB.json
//	run/zedkube/EdgeNodeClusterStatus/global.json    (after PublishZedkubeToken)
package evesim

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lf-edge/evelet/eve/evecfg/evepb"
	"github.com/lf-edge/evelet/eve/evecrypt"
	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/internal/atomicfile"
)

// DefaultOSVersion is the EVE version New gives a current device, and
// OldOSVersion the one it gives a device with Options.OldEVE.
const (
	DefaultOSVersion = "16.12.0-kvm-amd64"
	OldOSVersion     = "14.5.1-lts-kvm-amd64"
)

// Options shape a simulated device.
type Options struct {
	// OldEVE: publish ControllerCert, EdgeNodeInfo and EdgeNodeClusterConfig
	// under <Persist>/status, as EVE before 14.5.4 did (and 15.x, 16.0.0,
	// 16.1 ... 16.11). Without it the layout follows OSVersion (layoutOf).
	OldEVE bool
	// OSVersion is the running version (default DefaultOSVersion, or
	// OldOSVersion with OldEVE).
	OSVersion string
}

func (o Options) withDefaults() Options {
	if o.OSVersion == "" {
		o.OSVersion = DefaultOSVersion
		if o.OldEVE {
			o.OSVersion = OldOSVersion
		}
	}
	return o
}

// Project and enterprise names New publishes in EdgeNodeInfo and the config.
const (
	ProjectName    = "demo"
	EnterpriseName = "evelet"
)

// Controller certificate types, as eve-api's certs.ZCertType numbers them
// (Z_CERT_TYPE_CONTROLLER_SIGNING = 1, _INTERMEDIATE = 2,
// _ECDH_EXCHANGE = 3). zedagent copies the number from the controller's
// certificate list into ControllerCert.Type unchanged. evelet's reader
// ignores Type and finds certificates by hash.
const (
	CertTypeControllerSigning      int32 = 1
	CertTypeControllerIntermediate int32 = 2
	CertTypeControllerECDHExchange int32 = 3
)

// ControllerCert is pillar's types.ControllerCert as zedagent publishes it
// (topic "ControllerCert", key = hex of CertHash). Cert holds the bytes as
// received from the controller (base64 in JSON, as for every Go []byte).
// The simulated controller makes them as Adam does (lf-edge/adam
// pkg/server/apiHandlerv2.go, getCertChain and certs): the PEM with its
// trailing newline trimmed, CertHash = the first 16 bytes of sha256 over
// exactly those bytes, HashAlgo = HASH_ALGORITHM_SHA256_16BYTES (1).
type ControllerCert = evecrypt.ControllerCert

// controllerCertRecord makes c's record as Adam does.
func controllerCertRecord(c *x509.Certificate, typ int32) ControllerCert {
	trimmed := bytes.TrimSpace(pemCert(c))
	h := sha256.Sum256(trimmed)
	return ControllerCert{
		HashAlgo: int32(evepb.HashAlgorithm_HASH_ALGORITHM_SHA256_16BYTES),
		Type:     typ,
		Cert:     trimmed,
		CertHash: h[:16],
	}
}

// Device is one simulated EVE device. Its methods may be called from several
// goroutines; the exported fields must not be changed while they run.
type Device struct {
	// Root locates the Run and Persist directories under Dir().
	Root pubsub.Root
	// UUID is the device id (random v4).
	UUID string
	// Name is the EVE device name exactly as given (it may contain upper
	// case and spaces; evelet sanitises it).
	Name string

	// DeviceKey is the device's ECDH key (P-256) and DeviceCert its
	// certificate. ReplaceDeviceKey changes the key file only, not these.
	DeviceKey  *ecdsa.PrivateKey
	DeviceCert *x509.Certificate
	// ControllerKey / ControllerCert: the controller's ECDH-exchange key
	// and certificate (P-256, self-signed).
	ControllerKey  *ecdsa.PrivateKey
	ControllerCert *x509.Certificate
	// SigningKey / SigningCert: the controller's signing key and
	// certificate, used for the checkpoint's AuthContainer.
	SigningKey  *ecdsa.PrivateKey
	SigningCert *x509.Certificate

	// OSVersion is the running EVE version (<Run>/eve-release, the current
	// partition's ZbootStatus ShortVersion). Set by New and Reboot.
	OSVersion string
	// OldEVE: the device publishes like EVE before 14.5.4 (Options.OldEVE).
	OldEVE bool

	dir          string
	projectID    string
	enterpriseID string

	mu      sync.Mutex
	parts   partitions        // the two EVE partitions (zboot.go)
	version int               // config version of the last checkpoint written
	items   map[string]string // current EdgeDevConfig configItems
	cl      *clusterState     // current cluster, nil when none
}

// New creates a simulated current EVE device under dir: keys and
// certificates, the controller certificates as zedagent publishes them,
// EdgeNodeInfo, ZbootStatus and an initial checkpoint (config version "1",
// no cluster).
func New(dir, name string) (*Device, error) { return NewWithOptions(dir, name, Options{}) }

// NewWithOptions is New for the device opt describes.
func NewWithOptions(dir, name string, opt Options) (*Device, error) {
	opt = opt.withDefaults()
	if dir == "" {
		return nil, errors.New("evesim: empty directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("evesim: %w", err)
	}
	id, err := newUUID()
	if err != nil {
		return nil, err
	}
	projectID, err := newUUID()
	if err != nil {
		return nil, err
	}
	enterpriseID, err := newUUID()
	if err != nil {
		return nil, err
	}
	d := &Device{
		Root:         pubsub.Root{Run: filepath.Join(abs, "run"), Persist: filepath.Join(abs, "persist")},
		UUID:         id,
		Name:         name,
		OSVersion:    opt.OSVersion,
		OldEVE:       opt.OldEVE,
		dir:          abs,
		projectID:    projectID,
		enterpriseID: enterpriseID,
	}
	if d.DeviceKey, d.DeviceCert, err = newKeyAndCert(id+".ecdh", x509.KeyUsageKeyAgreement|x509.KeyUsageDigitalSignature); err != nil {
		return nil, err
	}
	if d.ControllerKey, d.ControllerCert, err = newKeyAndCert("evesim controller ecdh", x509.KeyUsageKeyAgreement|x509.KeyUsageDigitalSignature); err != nil {
		return nil, err
	}
	if d.SigningKey, d.SigningCert, err = newKeyAndCert("evesim controller signing", x509.KeyUsageDigitalSignature); err != nil {
		return nil, err
	}
	if err := d.writeDeviceKey(d.DeviceKey); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(d.deviceCertPath(), pemCert(d.DeviceCert), 0o644); err != nil {
		return nil, fmt.Errorf("evesim: %w", err)
	}
	if err := d.writeBoot(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.writeCheckpointLocked(); err != nil {
		return nil, err
	}
	if err := d.publishZedagentLocked(); err != nil {
		return nil, err
	}
	return d, nil
}

// Reboot is the device restarting into opt's release (an upgrade or a
// downgrade when the version changes): <Run> is a tmpfs and starts empty,
// <Persist> keeps everything, including the <Persist>/status copies an
// older release published. Init writes <Run>/eve-release and baseosmgr
// ZbootStatus; zedagent has not published yet: call PublishZedagent for that.
func (d *Device) Reboot(opt Options) error {
	opt = opt.withDefaults()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := os.RemoveAll(d.Root.Run); err != nil {
		return fmt.Errorf("evesim: %w", err)
	}
	d.parts.reboot(d.OSVersion, opt.OSVersion)
	d.OSVersion, d.OldEVE = opt.OSVersion, opt.OldEVE
	return d.writeBoot()
}

// PublishZedagent is zedagent starting after a Reboot: it replays the
// checkpoint and publishes the controller certificates, EdgeNodeInfo and
// EdgeNodeClusterConfig (the current cluster, or Initialized only) where
// this release publishes them.
func (d *Device) PublishZedagent() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.publishZedagentLocked()
}

// PublishControllerCerts is the first thing zedagent publishes after a
// Reboot: the controller certificates, restored from its own checkpoint of
// them, before it has parsed the config.
func (d *Device) PublishControllerCerts() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.writeControllerCerts()
}

func (d *Device) publishZedagentLocked() error {
	if err := d.writeControllerCerts(); err != nil {
		return err
	}
	if err := pubsub.Write(d.EdgeNodeInfoPath(), pubsub.EdgeNodeInfo{
		DeviceName:     d.Name,
		DeviceID:       d.UUID,
		ProjectName:    ProjectName,
		ProjectID:      d.projectID,
		EnterpriseName: EnterpriseName,
		EnterpriseID:   d.enterpriseID,
	}); err != nil {
		return fmt.Errorf("evesim: %w", err)
	}
	return d.publishClusterConfigLocked()
}

// publishClusterConfigLocked publishes EdgeNodeClusterConfig for the current
// cluster. Without one, current zedagent publishes {Initialized: true}
// (pillar cmd/zedagent/parseconfig.go publishEmptyENCC); releases before
// 16.12.0 (and 16.0.1) unpublished the key instead.
func (d *Device) publishClusterConfigLocked() error {
	var err error
	switch {
	case d.cl != nil:
		err = pubsub.Write(d.ClusterConfigPath(), d.clusterConfigLocked())
	case d.persistent(pubsub.TopicEdgeNodeClusterConfig):
		err = pubsub.Unpublish(d.ClusterConfigPath())
	default:
		err = pubsub.Write(d.ClusterConfigPath(), pubsub.EdgeNodeClusterConfig{Initialized: true})
	}
	if err != nil {
		return fmt.Errorf("evesim: %w", err)
	}
	return nil
}

// writeBoot writes what exists before zedagent runs: eve-release, ZbootStatus.
func (d *Device) writeBoot() error {
	if err := atomicfile.WriteFile(d.Root.EVERelease(), []byte(d.OSVersion+"\n"), 0o644); err != nil {
		return fmt.Errorf("evesim: %w", err)
	}
	if hv := hvType(d.OSVersion); hv != "" {
		if err := atomicfile.WriteFile(d.Root.EVEHVType(), []byte(hv+"\n"), 0o644); err != nil {
			return fmt.Errorf("evesim: %w", err)
		}
	}
	return d.writeZboot()
}

// Dir is the simulator's directory (absolute).
func (d *Device) Dir() string { return d.dir }

// zedagentTopicDir is where this release publishes topic: <Run>/zedagent,
// or <Persist>/status/zedagent where the release makes it persistent.
func (d *Device) zedagentTopicDir(topic string) string {
	if d.persistent(topic) {
		return d.Root.PersistentTopicDir(pubsub.AgentZedAgent, topic)
	}
	return d.Root.TopicDir(pubsub.AgentZedAgent, topic)
}

func (d *Device) persistent(topic string) bool {
	if d.OldEVE {
		return true
	}
	l := layoutOf(d.OSVersion)
	if topic == pubsub.TopicControllerCert {
		return l.persistentCert
	}
	return l.persistentCluster
}

// layout is where a release's zedagent publishes ControllerCert
// (persistentCert) and EdgeNodeClusterConfig + EdgeNodeInfo
// (persistentCluster), read from the Persistent field of those publications
// in pillar cmd/zedagent/zedagent.go at every tag 14.5.0-lts ... 17.3.0:
// all three persistent before 14.5.4 and in 15.x, 16.0.0, 16.1 ... 16.11;
// only ControllerCert non-persistent from 14.5.4-rc1 in 14.5.x; none
// persistent from 16.0.1-rc1 in 16.0.x, from 16.12.0, and in 0.0.0
// snapshots. Written here from those facts, independently of eve's own
// table, so a test compares the two.
type layout struct{ persistentCert, persistentCluster bool }

var versionRE = regexp.MustCompile(`^(\d+)\.(\d+)\.(\d+)`)

func layoutOf(version string) layout {
	m := versionRE.FindStringSubmatch(version)
	if m == nil {
		return layout{}
	}
	var v [3]int
	for i := range v {
		v[i], _ = strconv.Atoi(m[i+1])
	}
	switch {
	case v == [3]int{}:
		return layout{}
	case v[0] > 16 || (v[0] == 16 && v[1] >= 12):
		return layout{}
	case v[0] == 16 && v[1] == 0 && v[2] >= 1:
		return layout{}
	case v[0] == 14 && v[1] == 5 && v[2] >= 4:
		return layout{persistentCert: false, persistentCluster: true}
	}
	return layout{persistentCert: true, persistentCluster: true}
}

// hvType is the build flavour in an EVE version string
// (<version>-<HV>-<arch>: the second-to-last dash-separated part, as
// pillar base.versionToHVType reads it); "" when there is none.
func hvType(version string) string {
	parts := strings.Split(version, "-")
	if len(parts) < 3 {
		return ""
	}
	return parts[len(parts)-2]
}

// ControllerCertDir is where this release publishes the controller
// certificates: <Run>/zedagent/ControllerCert, or
// <Persist>/status/zedagent/ControllerCert on an OldEVE device.
func (d *Device) ControllerCertDir() string { return d.zedagentTopicDir(pubsub.TopicControllerCert) }

// ClusterConfigPath is where this release publishes EdgeNodeClusterConfig.
func (d *Device) ClusterConfigPath() string {
	return filepath.Join(d.zedagentTopicDir(pubsub.TopicEdgeNodeClusterConfig), pubsub.KeyGlobal+".json")
}

// EdgeNodeInfoPath is where this release publishes EdgeNodeInfo.
func (d *Device) EdgeNodeInfoPath() string {
	return filepath.Join(d.zedagentTopicDir(pubsub.TopicEdgeNodeInfo), pubsub.KeyGlobal+".json")
}

// ControllerCertHash is the hash under which the controller names its ECDH
// certificate (the CertHash of its ControllerCert record, and the
// controllerCertHash of the cipher contexts it sends).
func (d *Device) ControllerCertHash() []byte {
	return controllerCertRecord(d.ControllerCert, CertTypeControllerECDHExchange).CertHash
}

// DeviceCertPath is <Persist>/certs/ecdh.cert.pem.
func (d *Device) DeviceCertPath() string { return d.deviceCertPath() }

// CheckpointBackup is <Persist>/checkpoint/lastconfig.bak.
func (d *Device) CheckpointBackup() string { return d.Root.Checkpoint() + ".bak" }

// ConfigVersion is the EdgeDevConfig id.version of the last checkpoint
// written ("1" after New).
func (d *Device) ConfigVersion() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strconv.Itoa(d.version)
}

func (d *Device) deviceCertPath() string {
	return filepath.Join(d.Root.Persist, "certs", "ecdh.cert.pem")
}

func (d *Device) writeDeviceKey(k *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return fmt.Errorf("evesim: device key: %w", err)
	}
	b := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	if err := atomicfile.WriteFile(d.Root.DeviceECDHKey(), b, 0o600); err != nil {
		return fmt.Errorf("evesim: %w", err)
	}
	return nil
}

// writeControllerCerts publishes the signing and the ECDH-exchange
// certificate as zedagent does: one JSON item each, key hex(CertHash).
func (d *Device) writeControllerCerts() error {
	for _, c := range []struct {
		cert *x509.Certificate
		typ  int32
	}{
		{d.SigningCert, CertTypeControllerSigning},
		{d.ControllerCert, CertTypeControllerECDHExchange},
	} {
		item := controllerCertRecord(c.cert, c.typ)
		path := filepath.Join(d.ControllerCertDir(), hex.EncodeToString(item.CertHash)+".json")
		if err := pubsub.Write(path, item); err != nil {
			return fmt.Errorf("evesim: %w", err)
		}
	}
	return nil
}

// writeZboot publishes IMGA as the active, current partition running
// OSVersion and IMGB as unused.
func (d *Device) writeZboot() error {
	for _, z := range d.parts.status(d.OSVersion) {
		if err := pubsub.Write(d.Root.ZbootStatus(z.PartitionLabel), z); err != nil {
			return fmt.Errorf("evesim: %w", err)
		}
	}
	return nil
}

func newKeyAndCert(cn string, usage x509.KeyUsage) (*ecdsa.PrivateKey, *x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("evesim: generate key: %w", err)
	}
	cert, err := selfSigned(key, cn, usage)
	if err != nil {
		return nil, nil, err
	}
	return key, cert, nil
}

func selfSigned(key *ecdsa.PrivateKey, cn string, usage x509.KeyUsage) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, fmt.Errorf("evesim: serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"evelet evesim"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     usage,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("evesim: certificate %q: %w", cn, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("evesim: certificate %q: %w", cn, err)
	}
	return cert, nil
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// newUUID returns a random (version 4, RFC 4122 variant) UUID.
func newUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("evesim: uuid: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
}
