package evesim

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/lf-edge/evelet/eve/evecfg"
	"github.com/lf-edge/evelet/eve/evecfg/evepb"
	"github.com/lf-edge/evelet/eve/evecrypt"
	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/lf-edge/evelet/internal/atomicfile"
)

// DefaultCipherContextID is the cipher context id SetCluster uses when
// Cluster.CipherContextID is empty.
const DefaultCipherContextID = "ctx-1"

// Cluster is the cluster intent the simulated controller sends.
type Cluster struct {
	Name string
	// ID is the cluster UUID; SetCluster picks a random one when empty.
	ID           string
	JoinServerIP string
	// Token is the clear-text cluster token payload (a K10 token, a JSON
	// envelope, a kubeconfig, ...). It only ever appears encrypted on disk.
	Token string
	// ConfigItems become the EdgeDevConfig configItems (e.g.
	// "evelet.apiserver-url"); they replace the previous set.
	ConfigItems map[string]string
	// CipherContextID names the cipher context; default DefaultCipherContextID.
	CipherContextID string

	// ClusterInterface (logical port label, e.g. "eth0") and ClusterIPPrefix
	// (this node's address, CIDR, e.g. "10.1.0.5/24") are optional. When the
	// prefix's address equals JoinServerIP zedagent marks the node as
	// BootstrapNode, and so does the simulator.
	ClusterInterface string
	ClusterIPPrefix  string
}

// clusterState is the cluster part of the current config.
type clusterState struct {
	c     Cluster
	ctx   *evepb.CipherContext // the context in EdgeDevConfig.cipherContexts
	block *evepb.CipherBlock   // EdgeNodeCluster.encrypted_cluster_token
}

// Cluster returns the cluster currently configured (with the defaults
// SetCluster filled in, e.g. a generated ID), and false when there is none.
func (d *Device) Cluster() (Cluster, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cl == nil {
		return Cluster{}, false
	}
	c := d.cl.c
	c.ConfigItems = maps.Clone(c.ConfigItems)
	return c, true
}

// SetCluster is the controller putting the device into cluster c: it bumps
// the config version, encrypts EncryptionBlock{cluster_token: c.Token} with
// the controller's ECDH key for the device certificate under a fresh
// CipherContext, writes the signed checkpoint (keeping the previous one as
// lastconfig.bak) and publishes EdgeNodeClusterConfig under <Run> as zedagent
// does after parsing that config.
func (d *Device) SetCluster(c Cluster) error {
	return d.setCluster(c, "", false)
}

// SetConfigItems rewrites the checkpoint (new version) with the same cluster,
// the same cipher block, and items as the configItems. EdgeNodeClusterConfig
// is not rewritten: its content does not change, and EVE's pubsub does not
// rewrite an unchanged item.
func (d *Device) SetConfigItems(items map[string]string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	oldItems, oldCl := d.items, d.cl
	d.items = maps.Clone(items)
	if d.cl != nil {
		cs := *d.cl
		cs.c.ConfigItems = maps.Clone(items)
		d.cl = &cs
	}
	if err := d.writeCheckpointLocked(); err != nil {
		d.items, d.cl = oldItems, oldCl
		return err
	}
	return nil
}

// RemoveCluster is the controller taking the device out of its cluster: a
// new checkpoint without cluster and without cipher contexts (config items
// are kept), and EdgeNodeClusterConfig{Initialized: true, Valid: false} as
// current zedagent publishes it (a release that publishes it persistently unpublishes the key).
func (d *Device) RemoveCluster() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	old := d.cl
	d.cl = nil
	if err := d.writeCheckpointLocked(); err != nil {
		d.cl = old
		return err
	}
	return d.publishClusterConfigLocked()
}

// PublishZedkubeToken writes <Run>/zedkube/EdgeNodeClusterStatus/global.json
// as zedkube does on EVE-k builds: the decrypted token in plain text in
// EncryptedClusterToken, plus the current cluster's identity if any.
func (d *Device) PublishZedkubeToken(token string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := pubsub.EdgeNodeClusterStatus{EncryptedClusterToken: token}
	if d.cl != nil {
		c := d.cl.c
		st.ClusterName = c.Name
		st.ClusterID = pubsub.UUIDandVersion{UUID: pubsub.UUID(c.ID)}
		st.ClusterInterface = c.ClusterInterface
		st.IsWorkerNode = true
		st.JoinServerIP = net.ParseIP(c.JoinServerIP)
		if ipn := parsePrefix(c.ClusterIPPrefix); ipn != nil {
			st.ClusterIPPrefix = ipn
			st.BootstrapNode = ipn.IP.Equal(st.JoinServerIP)
		}
	}
	if err := pubsub.Write(d.Root.EdgeNodeClusterStatus(), st); err != nil {
		return fmt.Errorf("evesim: %w", err)
	}
	return nil
}

// setCluster implements SetCluster and its faulty variants: blockCtxID, if
// not "", replaces the cipher context id the block names; tamper flips the
// block's clearTextSha256.
func (d *Device) setCluster(c Cluster, blockCtxID string, tamper bool) error {
	c, err := normalize(c)
	if err != nil {
		return err
	}
	ctx := evecrypt.NewCipherContext(c.CipherContextID, deviceCertHash(d.DeviceCert), d.ControllerCertHash())
	block, err := evecrypt.EncryptEncryptionBlock(&evepb.EncryptionBlock{ClusterToken: c.Token}, ctx, d.ControllerKey, d.DeviceCert)
	if err != nil {
		return fmt.Errorf("evesim: encrypt cluster token: %w", err)
	}
	if blockCtxID != "" {
		block.CipherContextId = blockCtxID
	}
	if tamper {
		block.ClearTextSha256[0] ^= 0xff
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	oldItems, oldCl := d.items, d.cl
	d.items = maps.Clone(c.ConfigItems)
	d.cl = &clusterState{c: c, ctx: ctx, block: block}
	if err := d.writeCheckpointLocked(); err != nil {
		d.items, d.cl = oldItems, oldCl
		return err
	}
	return d.publishClusterConfigLocked()
}

// deviceCertHash is how the simulated controller names the device's ECDH
// certificate: sha256 of the PEM the device sent. evelet does not read it.
func deviceCertHash(c *x509.Certificate) []byte {
	h := sha256.Sum256(pemCert(c))
	return h[:]
}

// normalize fills in defaults and refuses what zedagent could not parse.
func normalize(c Cluster) (Cluster, error) {
	c.ConfigItems = maps.Clone(c.ConfigItems)
	if c.CipherContextID == "" {
		c.CipherContextID = DefaultCipherContextID
	}
	if c.ID == "" {
		id, err := newUUID()
		if err != nil {
			return c, err
		}
		c.ID = id
	} else if !pubsub.UUID(c.ID).Valid() {
		return c, fmt.Errorf("evesim: cluster ID %q is not a UUID (zedagent would drop the cluster config)", c.ID)
	}
	if c.JoinServerIP != "" && net.ParseIP(c.JoinServerIP) == nil {
		return c, fmt.Errorf("evesim: JoinServerIP %q is not an IP address", c.JoinServerIP)
	}
	// zedagent (parseEdgeNodeClusterConfig) publishes a cluster without a
	// valid cluster_ip_prefix as Initialized only: "not in a cluster".
	if c.ClusterIPPrefix == "" {
		return c, errors.New("evesim: ClusterIPPrefix is empty (zedagent would publish the device as not in a cluster)")
	}
	if parsePrefix(c.ClusterIPPrefix) == nil {
		return c, fmt.Errorf("evesim: ClusterIPPrefix %q is not a CIDR (zedagent would drop the cluster config)", c.ClusterIPPrefix)
	}
	return c, nil
}

// parsePrefix parses a CIDR keeping the host address, as zedagent does.
func parsePrefix(s string) *net.IPNet {
	if s == "" {
		return nil
	}
	ip, ipn, err := net.ParseCIDR(s)
	if err != nil {
		return nil
	}
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	ipn.IP = ip
	return ipn
}

// clusterConfigLocked is the EdgeNodeClusterConfig zedagent derives from
// the current cluster (d.cl must be set).
func (d *Device) clusterConfigLocked() pubsub.EdgeNodeClusterConfig {
	c := d.cl.c
	cb := cipherBlockStatus(c.ID, d.cl.block, []*evepb.CipherContext{d.cl.ctx})
	enc := pubsub.EdgeNodeClusterConfig{
		Initialized: true,
		Valid:       true,
		ClusterName: c.Name,
		// zedagent fills only the UUID of ClusterID; Version stays "".
		ClusterID:        pubsub.UUIDandVersion{UUID: pubsub.UUID(c.ID)},
		ClusterInterface: c.ClusterInterface,
		IsWorkerNode:     true,
		JoinServerIP:     net.ParseIP(c.JoinServerIP),
		CipherToken:      cb,
		// zedagent points the manifest at the same cipher block.
		CipherGzipRegistrationManifestYaml: cb,
		ClusterType:                        pubsub.ClusterTypeK3sBase,
	}
	if ipn := parsePrefix(c.ClusterIPPrefix); ipn != nil {
		enc.ClusterIPPrefix = ipn
		enc.BootstrapNode = ipn.IP.Equal(enc.JoinServerIP)
	}
	return enc
}

// cipherBlockStatus is what zedagent's parseCipherBlock publishes for block:
// key as CipherBlockID; IsCipher only with cipher data and a context id
// (else an "incomplete data" error); the named context embedded when the
// config has it, nil otherwise.
func cipherBlockStatus(key string, block *evepb.CipherBlock, ctxs []*evepb.CipherContext) pubsub.CipherBlockStatus {
	st := pubsub.CipherBlockStatus{
		CipherBlockID:   key,
		CipherContextID: block.GetCipherContextId(),
		InitialValue:    block.GetInitialValue(),
		CipherData:      block.GetCipherData(),
		ClearTextHash:   block.GetClearTextSha256(),
	}
	if len(st.CipherData) == 0 || st.CipherContextID == "" {
		st.Error = key + ", block contains incomplete data"
		st.ErrorTime = time.Now().UTC()
		return st
	}
	st.IsCipher = true
	for _, cc := range ctxs {
		if cc.GetContextId() == st.CipherContextID {
			st.CipherContext = &pubsub.CipherContext{
				ContextID:          cc.GetContextId(),
				HashScheme:         int32(cc.GetHashScheme()),
				KeyExchangeScheme:  int32(cc.GetKeyExchangeScheme()),
				EncryptionScheme:   int32(cc.GetEncryptionScheme()),
				ControllerCertHash: cc.GetControllerCertHash(),
				DeviceCertHash:     cc.GetDeviceCertHash(),
			}
			break
		}
	}
	return st
}

// configLocked builds the EdgeDevConfig for the current state and version.
func (d *Device) configLocked() *evepb.EdgeDevConfig {
	cfg := &evepb.EdgeDevConfig{
		Id:             &evepb.UUIDandVersion{Uuid: d.UUID, Version: strconv.Itoa(d.version)},
		DeviceName:     d.Name,
		ProjectName:    ProjectName,
		ProjectId:      d.projectID,
		EnterpriseName: EnterpriseName,
		EnterpriseId:   d.enterpriseID,
	}
	for _, k := range slices.Sorted(maps.Keys(d.items)) {
		cfg.ConfigItems = append(cfg.ConfigItems, &evepb.ConfigItem{Key: k, Value: d.items[k]})
	}
	if d.cl != nil {
		c := d.cl.c
		cfg.CipherContexts = []*evepb.CipherContext{proto.CloneOf(d.cl.ctx)}
		cfg.Cluster = &evepb.EdgeNodeCluster{
			ClusterName:           c.Name,
			ClusterId:             c.ID,
			ClusterInterface:      c.ClusterInterface,
			ClusterIpPrefix:       c.ClusterIPPrefix,
			IsWorkerNode:          true,
			JoinServerIp:          c.JoinServerIP,
			EncryptedClusterToken: proto.CloneOf(d.cl.block),
			ClusterType:           evepb.ClusterType_CLUSTER_TYPE_K3S_BASE,
		}
	}
	return cfg
}

// writeCheckpointLocked bumps the config version and writes the signed
// checkpoint as zedagent does: the current lastconfig, if it is a valid
// checkpoint, is first copied to lastconfig.bak (last known good; a corrupt
// lastconfig never replaces a good .bak), then the new one is written
// atomically (temp file + rename). There is no moment without a lastconfig.
func (d *Device) writeCheckpointLocked() error {
	d.version++
	data, err := d.signedCheckpointLocked()
	if err != nil {
		d.version--
		return err
	}
	path := d.Root.Checkpoint()
	old, err := os.ReadFile(path)
	switch {
	case err == nil:
		if _, perr := evecfg.ParseCheckpoint(old); perr == nil {
			if err := atomicfile.WriteFile(path+".bak", old, 0o644); err != nil {
				d.version--
				return fmt.Errorf("evesim: %w", err)
			}
		}
	case !errors.Is(err, fs.ErrNotExist):
		d.version--
		return fmt.Errorf("evesim: %w", err)
	}
	if err := atomicfile.WriteFile(path, data, 0o644); err != nil {
		d.version--
		return fmt.Errorf("evesim: %w", err)
	}
	return nil
}

// signedCheckpointLocked marshals AuthContainer{AuthBody{ConfigResponse}}
// signed by SigningKey: ECDSA r||s (32 bytes each) over sha256(payload),
// senderCertHash = evecfg.CertHash(SigningCert), senderCert = its PEM.
func (d *Device) signedCheckpointLocked() ([]byte, error) {
	cfg := d.configLocked()
	cfgBytes, err := proto.MarshalOptions{Deterministic: true}.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("evesim: marshal config: %w", err)
	}
	cfgHash := sha256.Sum256(cfgBytes)
	payload, err := proto.MarshalOptions{Deterministic: true}.Marshal(&evepb.ConfigResponse{
		Config:     cfg,
		ConfigHash: hex.EncodeToString(cfgHash[:]),
	})
	if err != nil {
		return nil, fmt.Errorf("evesim: marshal config response: %w", err)
	}
	sig, err := signRS(d.SigningKey, payload)
	if err != nil {
		return nil, err
	}
	data, err := proto.Marshal(&evepb.AuthContainer{
		ProtectedPayload: &evepb.AuthBody{Payload: payload},
		Algo:             evepb.HashAlgorithm_HASH_ALGORITHM_SHA256_32BYTES,
		SenderCertHash:   evecfg.CertHash(d.SigningCert),
		SignatureHash:    sig,
		SenderCert:       pemCert(d.SigningCert),
	})
	if err != nil {
		return nil, fmt.Errorf("evesim: marshal auth container: %w", err)
	}
	return data, nil
}

// signRS signs sha256(payload) and returns the fixed-size r||s form.
func signRS(key *ecdsa.PrivateKey, payload []byte) ([]byte, error) {
	digest := sha256.Sum256(payload)
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return nil, fmt.Errorf("evesim: sign checkpoint: %w", err)
	}
	size := (key.Curve.Params().BitSize + 7) / 8
	sig := make([]byte, 2*size)
	r.FillBytes(sig[:size])
	s.FillBytes(sig[size:])
	return sig, nil
}
