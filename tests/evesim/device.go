// Package evesim simulates the EVE side of a device for tests and the demo:
// it writes exactly the files EVE's agents (zedagent, baseosmgr, zedkube)
// and the controller would leave on a device, so evelet's EVE source can be
// exercised with EVE-side inputs only. Nothing here reads evelet's output.
//
// On-disk layout, relative to the simulator's directory (Root.Run = <dir>/run,
// Root.Persist = <dir>/persist):
//
//	persist/certs/ecdh.key.pem        device ECDH key, PEM "EC PRIVATE KEY" (SEC 1), P-256, mode 0600
//	persist/certs/ecdh.cert.pem       device ECDH certificate, PEM
//	persist/status/zedagent/ControllerCert/<hex CertHash>.json
//	                                  one pubsub item per controller certificate (types.ControllerCert)
//	persist/status/zedagent/ControllerCert/controller-certs.pem
//	                                  the same certificates as a PEM bundle, for humans
//	persist/status/zedagent/EdgeNodeInfo/global.json
//	                                  EdgeNodeInfo (zedagent publishes it persistently)
//	persist/checkpoint/lastconfig     signed AuthContainer{ConfigResponse{EdgeDevConfig}}
//	persist/checkpoint/lastconfig.bak the previous (last known good) checkpoint
//	run/baseosmgr/ZbootStatus/IMGA.json, IMGB.json
//	run/zedagent/EdgeNodeClusterConfig/global.json   (after SetCluster / RemoveCluster)
//	run/zedkube/EdgeNodeClusterStatus/global.json    (after PublishZedkubeToken)
package evesim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/lf-edge/evelet/agent/eve/evecfg"
	"github.com/lf-edge/evelet/agent/eve/evecfg/evepb"
	"github.com/lf-edge/evelet/agent/eve/pubsub"
	"github.com/lf-edge/evelet/internal/atomicfile"
)

// DefaultOSVersion is the EVE version New puts in ZbootStatus.
const DefaultOSVersion = "14.5.1-lts-kvm-amd64"

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
// (persistent topic "ControllerCert", key = hex of CertHash). Cert holds the
// PEM bytes as received from the controller (base64 in JSON, as for every Go
// []byte); CertHash is sha256 over those PEM bytes (evecfg.CertHash), all 32
// bytes, hence HashAlgo = HASH_ALGORITHM_SHA256_32BYTES (2).
type ControllerCert struct {
	HashAlgo int32
	Type     int32
	Cert     []byte
	CertHash []byte
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

	// OSVersion is the running EVE version (ZbootStatus IMGA ShortVersion).
	OSVersion string

	dir          string
	projectID    string
	enterpriseID string

	mu      sync.Mutex
	version int               // config version of the last checkpoint written
	items   map[string]string // current EdgeDevConfig configItems
	cl      *clusterState     // current cluster, nil when none
}

// New creates a simulated device under dir: keys and certificates, the
// controller certificates as zedagent keeps them, EdgeNodeInfo, ZbootStatus
// and an initial checkpoint (config version "1", no cluster).
func New(dir, name string) (*Device, error) {
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
		OSVersion:    DefaultOSVersion,
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
	if err := d.writeControllerCerts(); err != nil {
		return nil, err
	}
	if err := pubsub.Write(d.Root.EdgeNodeInfoPersistent(), pubsub.EdgeNodeInfo{
		DeviceName:     name,
		DeviceID:       id,
		ProjectName:    ProjectName,
		ProjectID:      projectID,
		EnterpriseName: EnterpriseName,
		EnterpriseID:   enterpriseID,
	}); err != nil {
		return nil, fmt.Errorf("evesim: %w", err)
	}
	if err := d.writeZboot(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.writeCheckpointLocked(); err != nil {
		return nil, err
	}
	return d, nil
}

// Dir is the simulator's directory (absolute).
func (d *Device) Dir() string { return d.dir }

// ControllerCertDir is <Persist>/status/zedagent/ControllerCert, where
// zedagent keeps the controller's certificates.
func (d *Device) ControllerCertDir() string {
	return d.Root.PersistentTopicDir(pubsub.AgentZedAgent, "ControllerCert")
}

// ControllerCertBundle is the PEM bundle New writes next to the JSON items.
func (d *Device) ControllerCertBundle() string {
	return filepath.Join(d.ControllerCertDir(), "controller-certs.pem")
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
// certificate as zedagent does (one JSON item each) plus a PEM bundle.
func (d *Device) writeControllerCerts() error {
	var bundle []byte
	for _, c := range []struct {
		cert *x509.Certificate
		typ  int32
	}{
		{d.SigningCert, CertTypeControllerSigning},
		{d.ControllerCert, CertTypeControllerECDHExchange},
	} {
		p := pemCert(c.cert)
		hash := evecfg.CertHash(c.cert) // sha256 of exactly these PEM bytes
		item := ControllerCert{
			HashAlgo: int32(evepb.HashAlgorithm_HASH_ALGORITHM_SHA256_32BYTES),
			Type:     c.typ,
			Cert:     p,
			CertHash: hash,
		}
		path := filepath.Join(d.ControllerCertDir(), hex.EncodeToString(hash)+".json")
		if err := pubsub.Write(path, item); err != nil {
			return fmt.Errorf("evesim: %w", err)
		}
		bundle = append(bundle, p...)
	}
	if err := atomicfile.WriteFile(d.ControllerCertBundle(), bundle, 0o644); err != nil {
		return fmt.Errorf("evesim: %w", err)
	}
	return nil
}

// writeZboot publishes IMGA as the active, current partition running
// OSVersion and IMGB as unused.
func (d *Device) writeZboot() error {
	for _, z := range []pubsub.ZbootStatus{
		{
			PartitionLabel:   pubsub.PartitionIMGA,
			PartitionDevname: "/dev/sda2",
			PartitionState:   pubsub.PartitionStateActive,
			ShortVersion:     d.OSVersion,
			LongVersion:      d.OSVersion,
			CurrentPartition: true,
			TestComplete:     true,
		},
		{
			PartitionLabel:   pubsub.PartitionIMGB,
			PartitionDevname: "/dev/sda3",
			PartitionState:   pubsub.PartitionStateUnused,
		},
	} {
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
