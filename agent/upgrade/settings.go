package upgrade

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Config items (EdgeDevConfig configItems, set by the device owner) that
// tune the drain before an OS update or reboot. Every other item is someone
// else's; a bad value is reported and the default kept.
const (
	KeyPrefix = "evelet.upgrade."
	// KeyDrainTimeout bounds one drain attempt (Go duration, e.g. "10m").
	KeyDrainTimeout = KeyPrefix + "drain-timeout"
	// KeyDrainAttempts is how many attempts before FailedDrain (EVE-k: 4).
	KeyDrainAttempts = KeyPrefix + "drain-attempts"
	// KeyDrainRetryInterval is the pause between attempts (EVE-k: 300s).
	KeyDrainRetryInterval = KeyPrefix + "drain-retry-interval"
	// KeyEvictionRetry is the pause before asking again for evictions a
	// PodDisruptionBudget refused (HTTP 429).
	KeyEvictionRetry = KeyPrefix + "eviction-retry"
)

// Settings tune the drain.
type Settings struct {
	DrainTimeout       time.Duration
	DrainAttempts      int
	DrainRetryInterval time.Duration
	EvictionRetry      time.Duration
}

// DefaultSettings are for builds that ask before they reboot (EVE-k,
// where EVE waits for the drain): zedkube's drain (pkg/pillar/cmd/zedkube/
// drain.go: 4 attempts, 300 s apart) with a shorter per-attempt timeout
// than its 24 h kubernetes.drain.timeout.
func DefaultSettings() Settings {
	return Settings{
		DrainTimeout:       10 * time.Minute,
		DrainAttempts:      4,
		DrainRetryInterval: 300 * time.Second,
		EvictionRetry:      5 * time.Second,
	}
}

// RebootWindow is the least time EVE leaves between scheduling a reboot
// and resetting the device on a build that does not ask: once the other
// partition is "updating" (or a reboot is requested), nodeagent waits
// minRebootDelay (30 s), then up to maxDomainHaltTime (300 s) for EVE's own
// apps to halt (no time at all when none runs), then minRebootDelay again,
// then runs "zboot reset" (reboot -n -f) (pillar cmd/nodeagent/nodeagent.go,
// handletimers.go handleNodeOperation, zboot.Reset).
const RebootWindow = 60 * time.Second

// NoAskSettings are the defaults on builds that do not ask (no zedkube,
// nothing waits for the drain): one attempt whose budget ends inside
// RebootWindow with time to spare, so evictions are all sent, and pods with
// the default 30 s grace period get it, before EVE resets the device even
// when the cycle starts only at the last signal. A drain that started
// earlier (BaseOsConfig activation) has the download and install as well.
// Retrying 300 s later, as zedkube does, would land after the reset.
func NoAskSettings() Settings {
	return Settings{
		DrainTimeout:       45 * time.Second,
		DrainAttempts:      1,
		DrainRetryInterval: 5 * time.Second,
		EvictionRetry:      5 * time.Second,
	}
}

// Budget is the longest a cycle's drain can take before FailedDrain.
func (s Settings) Budget() time.Duration {
	return time.Duration(s.DrainAttempts)*s.DrainTimeout + time.Duration(s.DrainAttempts-1)*s.DrainRetryInterval
}

// SettingsFor applies the owner's items to the defaults of the build:
// DefaultSettings where EVE asks for drains, NoAskSettings where it does
// not. Items the owner set win either way.
func SettingsFor(items map[string]string, asks bool) (Settings, []error) {
	base := DefaultSettings()
	if !asks {
		base = NoAskSettings()
	}
	return settingsFrom(base, items)
}

// SettingsFromConfigItems applies the owner's evelet.upgrade.* items to the
// defaults. Refused items keep their default and are returned as errors.
func SettingsFromConfigItems(items map[string]string) (Settings, []error) {
	return settingsFrom(DefaultSettings(), items)
}

func settingsFrom(s Settings, items map[string]string) (Settings, []error) {
	keys := make([]string, 0, len(items))
	for k := range items {
		if strings.HasPrefix(k, KeyPrefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var errs []error
	for _, k := range keys {
		v := strings.TrimSpace(items[k])
		var err error
		switch k {
		case KeyDrainTimeout:
			err = parseDuration(v, time.Second, 7*24*time.Hour, &s.DrainTimeout)
		case KeyDrainRetryInterval:
			err = parseDuration(v, 0, 24*time.Hour, &s.DrainRetryInterval)
		case KeyEvictionRetry:
			err = parseDuration(v, 100*time.Millisecond, time.Hour, &s.EvictionRetry)
		case KeyDrainAttempts:
			n, perr := strconv.Atoi(v)
			switch {
			case perr != nil:
				err = fmt.Errorf("not a whole number")
			case n < 1 || n > 100:
				err = fmt.Errorf("must be between 1 and 100")
			default:
				s.DrainAttempts = n
			}
		default:
			err = fmt.Errorf("unknown item; known: %s, %s, %s, %s", KeyDrainTimeout, KeyDrainAttempts, KeyDrainRetryInterval, KeyEvictionRetry)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("config item %s=%q: %w", k, items[k], err))
		}
	}
	return s, errs
}

func parseDuration(v string, min, max time.Duration, dst *time.Duration) error {
	d, err := time.ParseDuration(v)
	if err != nil {
		return fmt.Errorf("not a duration (e.g. 90s, 10m)")
	}
	if d < min || d > max {
		return fmt.Errorf("must be between %v and %v", min, max)
	}
	*dst = d
	return nil
}
