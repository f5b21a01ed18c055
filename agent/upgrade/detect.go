package upgrade

import (
	"sort"
	"time"

	"github.com/lf-edge/evelet/eve/pubsub"
)

// Triggers: what told evelet that EVE is about to reboot.
const (
	TriggerDrainRequestUpdate   = "NodeDrainRequest from baseosmgr"
	TriggerDrainRequestDeviceOp = "NodeDrainRequest from zedagent"
	TriggerBaseOsConfig         = "BaseOsConfig activates another version"
	TriggerPartitionUpdating    = "other partition updating"
	TriggerDeviceReboot         = "NodeAgentStatus reboot pending"
)

// request is EVE's intent to reboot as one snapshot shows it.
type request struct {
	key       string
	trigger   string
	requester pubsub.DrainRequester
	at        time.Time
	toVersion string
	// contentTree and retry identify an update seen in BaseOsConfig.
	contentTree string
	retry       uint32
	// asked: EVE published a NodeDrainRequest and waits for our status.
	asked bool
}

// activating returns the BaseOsConfig that activates a version other than
// running, if any (the first by content-tree UUID: EVE activates one).
func activating(s pubsub.Snapshot, running string) (string, pubsub.BaseOsConfig, bool) {
	keys := make([]string, 0, len(s.BaseOsConfigs))
	for k := range s.BaseOsConfigs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		c := s.BaseOsConfigs[k]
		if c.Activate && c.BaseOsVersion != "" && c.BaseOsVersion != running {
			return k, c, true
		}
	}
	return "", pubsub.BaseOsConfig{}, false
}

// detect reads EVE's intent. A NodeDrainRequest wins (zedagent's first, as
// zedkube's getNodeDrainRequester orders them). The early signals count
// only on builds that do not ask (asks false): where EVE asks, it withdraws
// its request after a failed drain and asks again, and an early signal
// would start a drain EVE did not ask for.
func detect(s pubsub.Snapshot, asks bool, done map[string]uint32, now time.Time) *request {
	running := s.RunningVersion()
	ct, cfg, upd := activating(s, running)
	if r, ok := s.DrainRequests[pubsub.AgentZedAgent]; ok {
		return &request{key: "zedagent/" + r.RequestedAt.UTC().Format(time.RFC3339Nano), trigger: TriggerDrainRequestDeviceOp,
			requester: pubsub.DrainRequesterDeviceOp, at: r.RequestedAt, asked: true}
	}
	if r, ok := s.DrainRequests[pubsub.AgentBaseOsMgr]; ok {
		req := &request{key: "baseosmgr/" + r.RequestedAt.UTC().Format(time.RFC3339Nano), trigger: TriggerDrainRequestUpdate,
			requester: pubsub.DrainRequesterUpdate, at: r.RequestedAt, asked: true}
		// baseosmgr's Context is the BaseOsConfig's key.
		if c, ok := s.BaseOsConfigs[r.Context]; ok && c.BaseOsVersion != running {
			req.toVersion, req.contentTree, req.retry = c.BaseOsVersion, r.Context, c.RetryUpdateCounter
		} else if upd {
			req.toVersion, req.contentTree, req.retry = cfg.BaseOsVersion, ct, cfg.RetryUpdateCounter
		}
		return req
	}
	if asks {
		return nil
	}
	if upd {
		if n, seen := done[cfg.BaseOsVersion]; !seen || n != cfg.RetryUpdateCounter {
			return &request{key: "update/" + cfg.BaseOsVersion, trigger: TriggerBaseOsConfig, requester: pubsub.DrainRequesterUpdate,
				at: now, toVersion: cfg.BaseOsVersion, contentTree: ct, retry: cfg.RetryUpdateCounter}
		}
	}
	for _, z := range s.Zboot {
		if !z.CurrentPartition && z.PartitionState == pubsub.PartitionStateUpdating {
			if _, seen := done[z.ShortVersion]; z.ShortVersion != "" && seen {
				continue
			}
			return &request{key: "update/" + z.ShortVersion, trigger: TriggerPartitionUpdating, requester: pubsub.DrainRequesterUpdate,
				at: now, toVersion: z.ShortVersion}
		}
	}
	if na := s.NodeAgent; na != nil && (na.DeviceReboot || na.DeviceShutdown || na.DevicePoweroff) {
		return &request{key: "reboot", trigger: TriggerDeviceReboot, requester: pubsub.DrainRequesterDeviceOp, at: now}
	}
	return nil
}

// failedUpdate reports whether baseosmgr gave up on the update the cycle is
// for (an error on its BaseOsStatus): no reboot follows.
func failedUpdate(s pubsub.Snapshot, st *State) (string, bool) {
	if st.ContentTreeUUID == "" {
		return "", false
	}
	bs, ok := s.BaseOsStatuses[st.ContentTreeUUID]
	if !ok || !bs.HasError() || bs.BaseOsVersion != st.ToVersion {
		return "", false
	}
	return bs.Error, true
}
