package evesim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/lf-edge/evelet/internal/atomicfile"
)

// Fault injection for bad-input tests. Each helper writes exactly the faulty
// artifact it names and nothing else; the Device's notion of the current
// config is updated only by the SetCluster variants.

// WriteRawClusterConfig writes b as-is (atomically) to ClusterConfigPath
// (<Run>/zedagent/EdgeNodeClusterConfig/global.json on a current EVE), e.g.
// malformed JSON.
func (d *Device) WriteRawClusterConfig(b []byte) error {
	if err := atomicfile.WriteFile(d.ClusterConfigPath(), b, 0o644); err != nil {
		return fmt.Errorf("evesim: %w", err)
	}
	return nil
}

// TruncateCheckpoint cuts <Persist>/checkpoint/lastconfig to its first n
// bytes in place, like a torn write; lastconfig.bak is left as it is.
func (d *Device) TruncateCheckpoint(n int) error {
	path := d.Root.Checkpoint()
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("evesim: %w", err)
	}
	if n < 0 || int64(n) > st.Size() {
		return fmt.Errorf("evesim: cannot truncate %s (%d bytes) to %d bytes", path, st.Size(), n)
	}
	if err := os.Truncate(path, int64(n)); err != nil {
		return fmt.Errorf("evesim: %w", err)
	}
	return nil
}

// RemoveCheckpointBackup removes lastconfig.bak (missing is not an error).
func (d *Device) RemoveCheckpointBackup() error {
	if err := os.Remove(d.CheckpointBackup()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("evesim: %w", err)
	}
	return nil
}

// SetClusterWithCipherContextID is SetCluster, except that the encrypted
// token (in the checkpoint and in the published CipherToken) names cipher
// context publishedID, which is not in the config: the config carries only
// c.CipherContextID (default DefaultCipherContextID). As zedagent does when
// it cannot find the context, the published CipherToken has IsCipher true and
// no embedded CipherContext. publishedID must differ from the config's id.
func (d *Device) SetClusterWithCipherContextID(c Cluster, publishedID string) error {
	ctxID := c.CipherContextID
	if ctxID == "" {
		ctxID = DefaultCipherContextID
	}
	if publishedID == "" || publishedID == ctxID {
		return fmt.Errorf("evesim: publishedID %q must be non-empty and differ from the config's cipher context %q", publishedID, ctxID)
	}
	return d.setCluster(c, publishedID, false)
}

// SetClusterTamperedHash is SetCluster with the cipher block's
// clearTextSha256 altered (one byte flipped), in the checkpoint and in the
// published CipherToken: decryption must fail with evecrypt.ErrHashMismatch.
func (d *Device) SetClusterTamperedHash(c Cluster) error {
	return d.setCluster(c, "", true)
}

// ReplaceDeviceKey overwrites <Persist>/certs/ecdh.key.pem with a freshly
// generated P-256 key that does not match the device certificate, as after a
// botched key rotation. d.DeviceKey and d.DeviceCert keep the original pair
// (so later SetCluster calls still encrypt for the certificate); decrypting
// with the key file then fails with evecrypt.ErrHashMismatch.
// RestoreDeviceKey undoes it.
func (d *Device) ReplaceDeviceKey() error {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("evesim: generate key: %w", err)
	}
	return d.writeDeviceKey(k)
}

// RestoreDeviceKey writes d.DeviceKey back to <Persist>/certs/ecdh.key.pem.
func (d *Device) RestoreDeviceKey() error {
	return d.writeDeviceKey(d.DeviceKey)
}

// Restore undoes every fault above in one step: it writes d.DeviceKey back to
// the key file and applies c with SetCluster, which writes a new valid
// checkpoint (a corrupt lastconfig is not kept as .bak; a removed .bak stays
// removed until the next write) and republishes EdgeNodeClusterConfig.
func (d *Device) Restore(c Cluster) error {
	if err := d.RestoreDeviceKey(); err != nil {
		return err
	}
	return d.SetCluster(c)
}
