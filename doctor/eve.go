package doctor

import (
	"fmt"
	"path/filepath"
)

// EVEPubsub checks that the EVE channel the agent reads is there:
// zedagent's pubsub directory and the checkpointed config (the cluster
// token is in it). With --join-file the channel is not used.
func EVEPubsub(cfg Config) Result {
	r := Result{Check: "eve-pubsub"}
	if cfg.JoinFile != "" {
		if !exists(cfg.JoinFile) {
			return warn(r, "join file "+cfg.JoinFile+" does not exist: the device does not join (or leaves)", "write the join file (docs/join-file.md)")
		}
		return ok(r, "not used: join file "+cfg.JoinFile)
	}
	root := cfg.EVERoot
	zedagent := filepath.Join(root.Run, "zedagent")
	if !exists(zedagent) {
		return fail(r, "no EVE pubsub at "+zedagent+": zedagent is not running, or this is not EVE's /run",
			"run evelet as an EVE service with EVE's /run and /persist (--eve-run, --eve-persist), or give it --join-file where there is no EVE")
	}
	if !exists(root.Checkpoint()) {
		return fail(r, "no checkpointed config at "+root.Checkpoint()+": the agent cannot read the cluster token",
			"give the evelet service EVE's /persist (--eve-persist); the device must have received its config from the controller once")
	}
	if !exists(root.EdgeNodeClusterConfig()) && !exists(root.EdgeNodeClusterConfigPersistent()) {
		return warn(r, fmt.Sprintf("EVE pubsub at %s, checkpoint present, but no EdgeNodeClusterConfig: the controller has not put this device in a cluster", zedagent),
			"add the device to a cluster in the EVE controller (docs/eve-channel.md)")
	}
	return ok(r, fmt.Sprintf("EVE pubsub at %s, checkpoint %s, EdgeNodeClusterConfig present", zedagent, root.Checkpoint()))
}
