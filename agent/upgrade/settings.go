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

// DefaultSettings follow zedkube's drain (pkg/pillar/cmd/zedkube/drain.go:
// 4 attempts, 300 s apart) with a shorter per-attempt timeout than its 24 h
// kubernetes.drain.timeout: on EVE builds without zedkube nothing waits for
// the drain, so a drain that outlives the download and install is cut by
// the reboot anyway.
func DefaultSettings() Settings {
	return Settings{
		DrainTimeout:       10 * time.Minute,
		DrainAttempts:      4,
		DrainRetryInterval: 300 * time.Second,
		EvictionRetry:      5 * time.Second,
	}
}

// SettingsFromConfigItems applies the owner's evelet.upgrade.* items to the
// defaults. Refused items keep their default and are returned as errors.
func SettingsFromConfigItems(items map[string]string) (Settings, []error) {
	s := DefaultSettings()
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
