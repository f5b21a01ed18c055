package eve

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"

	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/eve/evecfg"
	"github.com/lf-edge/evelet/eve/evecfg/evepb"
	"github.com/lf-edge/evelet/eve/evecrypt"
	"github.com/lf-edge/evelet/eve/pubsub"
)

// Config items (EdgeDevConfig.configItems) evelet reads; all start with
// "evelet." so they never collide with EVE's own. See docs/eve-channel.md.
const (
	// ItemAPIServerURL overrides https://<join_server_ip>:6443.
	ItemAPIServerURL = "evelet.apiserver-url"
)

// Inputs is everything the EVE side offers at one moment.
type Inputs struct {
	Snapshot      pubsub.Snapshot
	Checkpoint    *evecfg.Checkpoint
	CheckpointErr error
	DeviceKeyPath string
	// ControllerCertDirs are searched for the controller certificate a
	// cipher context names (see ControllerCertDirs).
	ControllerCertDirs []string
}

// Resolved is the outcome of Resolve: join intent (nil: not in a cluster)
// and the owner's config items.
type Resolved struct {
	Join        *intent.Join
	ConfigItems map[string]string
	// ClusterKey identifies the cluster intent (name/id/server) for logs.
	ClusterKey string
}

// ConfigItems are the owner's "evelet." config items from the checkpoint,
// read on their own path: they do not depend on the join intent resolving
// (a rotated controller certificate, one bad pubsub file), so the owner's
// guardrails never freeze at an older, possibly more permissive, policy.
// Without any checkpoint the owner has set nothing (an empty map); nil
// means unknown (the checkpoint exists but neither it nor its .bak is
// usable), and the caller keeps the items it had.
func ConfigItems(cp *evecfg.Checkpoint, cpErr error) map[string]string {
	if cp == nil {
		if cpErr == nil || isNotExist(cpErr) {
			return map[string]string{}
		}
		return nil
	}
	out := map[string]string{}
	for k, v := range cp.ConfigItems() {
		if strings.HasPrefix(k, "evelet.") {
			out[k] = v
		}
	}
	return out
}

// Resolve turns EVE-side inputs into join intent. Every failure is one
// error saying which input is wrong; nothing partial is returned.
func Resolve(in Inputs) (*Resolved, error) {
	cp := in.Checkpoint
	out := &Resolved{ConfigItems: ConfigItems(cp, in.CheckpointErr)}
	if out.ConfigItems == nil {
		out.ConfigItems = map[string]string{}
	}
	rel := ReleaseOf(in.Snapshot)
	if err := firstPubsubError(in.Snapshot, rel, cp != nil); err != nil {
		return nil, err
	}

	// Cluster intent, in this order (docs/eve-channel.md):
	//  1. the run-time topic <Run>/zedagent/EdgeNodeClusterConfig;
	//  2. the checkpoint, which zedagent replays at boot before it publishes;
	//  3. the <Persist>/status copy, only on a release that publishes it
	//     there (Release.PersistentClusterTopics) or when the version is
	//     unknown.
	// A <Persist>/status copy never outranks the checkpoint: it may be this
	// boot's topic, but also the last boot's, or a leftover of an older
	// release that nothing removes; ranked first it would make a device the
	// controller removed from its cluster rejoin at every boot until
	// zedagent publishes.
	ccRun, ccLast := pickTopic(signal(in.Snapshot.ClusterConfig), signal(in.Snapshot.ClusterConfigPersistent), rel)
	var (
		valid            bool
		name, id, joinIP string
		block            *evepb.CipherBlock
	)
	fromTopic := func(cc *pubsub.EdgeNodeClusterConfig) {
		valid = cc.Valid
		name, id = cc.ClusterName, cc.ClusterID.UUID.String()
		if cc.JoinServerIP != nil {
			joinIP = cc.JoinServerIP.String()
		}
		if t := cc.CipherToken; t.IsCipher || len(t.CipherData) > 0 {
			block = &evepb.CipherBlock{CipherContextId: t.CipherContextID, InitialValue: t.InitialValue, CipherData: t.CipherData, ClearTextSha256: t.ClearTextHash}
		}
	}
	switch {
	case ccRun != nil:
		fromTopic(ccRun)
	case cp != nil:
		if c := cp.Cluster(); c != nil {
			valid = true
			name, id, joinIP, block = c.GetClusterName(), c.GetClusterId(), c.GetJoinServerIp(), c.GetEncryptedClusterToken()
		}
	case ccLast != nil:
		fromTopic(ccLast)
	case in.CheckpointErr != nil && !isNotExist(in.CheckpointErr):
		return nil, fmt.Errorf("no cluster intent in pubsub and the checkpoint is unusable: %w", in.CheckpointErr)
	}
	if !valid {
		return out, nil
	}
	out.ClusterKey = fmt.Sprintf("%s/%s@%s", name, id, joinIP)

	// Device identity: the same precedence as the cluster intent.
	devName, devID := "", ""
	niRun, niLast := pickTopic(in.Snapshot.NodeInfo, in.Snapshot.NodeInfoPersistent, rel)
	switch {
	case niRun != nil:
		devName, devID = niRun.DeviceName, niRun.DeviceID
	case cp != nil:
		devName, devID = cp.Config.GetDeviceName(), cp.DeviceUUID()
	case niLast != nil:
		devName, devID = niLast.DeviceName, niLast.DeviceID
	}
	if devID == "" {
		return nil, errors.New("device id unknown: neither EdgeNodeInfo nor the checkpoint names it")
	}

	token, err := clusterToken(in, block, name)
	if err != nil {
		return nil, err
	}
	tok, err := evecrypt.ParseTokenPayload(token)
	if err != nil {
		return nil, fmt.Errorf("cluster token: %w", err)
	}
	m := tok.Material()
	if m.Kubeconfig == "" {
		// The owner's config item wins over the envelope's apiServer; the
		// join server IP is the fallback (docs/eve-channel.md).
		if u := out.ConfigItems[ItemAPIServerURL]; u != "" {
			m.APIServer = u
		}
		if m.APIServer == "" {
			ip := net.ParseIP(joinIP)
			if ip == nil {
				return nil, fmt.Errorf("cluster %q: join server IP %q is not an IP address", name, joinIP)
			}
			m.APIServer = "https://" + net.JoinHostPort(ip.String(), "6443")
		}
	}
	j := &intent.Join{
		Material:   m,
		NodeName:   NodeName(devName, devID),
		DeviceUUID: devID,
		OSVersion:  in.Snapshot.RunningVersion(),
	}
	if err := j.Validate(); err != nil {
		return nil, err
	}
	out.Join = j
	return out, nil
}

// clusterToken returns the clear-text token: zedkube's plaintext status
// when it exists for this cluster, else the decrypted cipher block.
func clusterToken(in Inputs, block *evepb.CipherBlock, cluster string) (string, error) {
	if st := in.Snapshot.ClusterStatus; st != nil && st.EncryptedClusterToken != "" && (st.ClusterName == "" || st.ClusterName == cluster) {
		return st.EncryptedClusterToken, nil
	}
	if block == nil || len(block.GetCipherData()) == 0 {
		return "", fmt.Errorf("cluster %q carries no encrypted cluster token", cluster)
	}
	if in.Checkpoint == nil {
		return "", fmt.Errorf("cipher context %q: no checkpointed config to read it from: %v", block.GetCipherContextId(), in.CheckpointErr)
	}
	cctx, err := in.Checkpoint.CipherContext(block.GetCipherContextId())
	if err != nil {
		return "", fmt.Errorf("wrong cipher context: %w", err)
	}
	key, err := evecrypt.LoadDeviceKey(in.DeviceKeyPath)
	if err != nil {
		return "", fmt.Errorf("device ECDH key: %w", err)
	}
	certs, err := LoadControllerCerts(in.ControllerCertDirs)
	if err != nil {
		return "", fmt.Errorf("cipher context %q: %w", cctx.GetContextId(), err)
	}
	cert, err := evecrypt.FindControllerCert(certs.Certs, cctx.GetControllerCertHash())
	if err != nil {
		return "", fmt.Errorf("cipher context %q: %w in %s%s", cctx.GetContextId(), err, strings.Join(in.ControllerCertDirs, ", "), problemText(certs.Problems))
	}
	eb, err := evecrypt.DecryptEncryptionBlock(block, cctx, key, cert)
	if err != nil {
		return "", fmt.Errorf("decrypt cluster token: %w", err)
	}
	if eb.GetClusterToken() == "" {
		return "", errors.New("decrypted EncryptionBlock has no cluster_token")
	}
	return eb.GetClusterToken(), nil
}

// pickTopic sorts the two copies of a topic: runtime is the <Run> copy;
// lastResort the <Persist>/status copy when this release publishes the
// topic there or the version is unknown (ranked after the checkpoint).
func pickTopic[T any](run, persist *T, rel Release) (runtime, lastResort *T) {
	if rel.PersistentClusterTopics() || !rel.Known() {
		return run, persist
	}
	return run, nil
}

// signal drops an EdgeNodeClusterConfig that is noise: neither Initialized
// nor Valid (pillar cmd/zedkube/zedkube.go handleEdgeNodeClusterConfigImpl
// ignores it too).
func signal(cc *pubsub.EdgeNodeClusterConfig) *pubsub.EdgeNodeClusterConfig {
	if cc == nil || (!cc.Initialized && !cc.Valid) {
		return nil
	}
	return cc
}

// firstPubsubError reports a broken topic evelet depends on. Other topics'
// errors (network instances, OS update) do not block joining, nor does a
// broken <Persist>/status copy that would not be read: one the running
// release does not publish, or any while the checkpoint is usable.
func firstPubsubError(s pubsub.Snapshot, rel Release, haveCheckpoint bool) error {
	for path, err := range s.Errors {
		for _, topic := range []string{pubsub.TopicEdgeNodeClusterConfig, pubsub.TopicEdgeNodeInfo} {
			if !strings.Contains(path, topic) {
				continue
			}
			old := strings.HasSuffix(filepath.ToSlash(path), "/status/"+pubsub.AgentZedAgent+"/"+topic+"/"+pubsub.KeyGlobal+".json")
			if old && (haveCheckpoint || (rel.Known() && !rel.PersistentClusterTopics())) {
				continue
			}
			return err
		}
	}
	return nil
}

func isNotExist(err error) bool {
	var le *evecfg.LoadError
	return errors.As(err, &le) && le.NotExist()
}
