package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/lf-edge/evelet/bootstrap"
	"github.com/lf-edge/evelet/bootstrap/intent"
	"sigs.k8s.io/yaml"
)

// DefaultAbsentFor is how long a join file must stay missing before the
// device counts as "not in a cluster" (see JoinFile.AbsentFor).
const DefaultAbsentFor = 30 * time.Second

// JoinFile is a Source reading a YAML file (see docs/join-file.md). It
// polls instead of using inotify so that editors' rename-into-place and
// bind mounts behave the same.
//
// Leaving a cluster drains the node and wipes its credentials, so a file
// that merely vanished (an unmounted volume, a provisioning tool that
// deletes before it writes) must not do it at once: the file must stay
// missing for AbsentFor, or say `leave: true`, before the Source reports
// "not in a cluster". A file that cannot be read for another reason is an
// error, which keeps the current state.
type JoinFile struct {
	Path     string
	Interval time.Duration
	// AbsentFor is how long the file must be missing (default
	// DefaultAbsentFor). It also applies at start: a device whose file is
	// missing reports "not in a cluster" only after this long.
	AbsentFor time.Duration

	now    func() time.Time // tests
	polled func()           // tests: called after every poll
}

func (f *JoinFile) Name() string { return "join-file " + f.Path }

// load also reports whether the file is missing.
func (f *JoinFile) load() (j *intent.Join, raw []byte, missing bool, err error) {
	b, err := os.ReadFile(f.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, true, nil
	}
	if err != nil {
		return nil, nil, false, fmt.Errorf("join file: %w (keeping the current state)", err)
	}
	j, err = ParseJoin(b)
	return j, b, false, err
}

// ParseJoin strictly decodes a join file: unknown fields are an error so
// a typo ("caCertHash") does not silently join unpinned. A file that says
// only `leave: true` is a request to leave: nil, no error.
func ParseJoin(b []byte) (*intent.Join, error) {
	var leave struct {
		Leave bool `json:"leave"`
	}
	if yaml.UnmarshalStrict(b, &leave) == nil && leave.Leave {
		return nil, nil
	}
	var j intent.Join
	if err := yaml.UnmarshalStrict(b, &j); err != nil {
		return nil, &bootstrap.PermanentError{Err: fmt.Errorf("join file: %w (to leave the cluster, the file says only \"leave: true\")", err)}
	}
	if err := j.Validate(); err != nil {
		return nil, err
	}
	return &j, nil
}

func (f *JoinFile) Watch(ctx context.Context) <-chan intent.Update {
	ch := make(chan intent.Update, 1)
	interval := f.Interval
	if interval == 0 {
		interval = 2 * time.Second
	}
	absentFor := f.AbsentFor
	if absentFor == 0 {
		absentFor = DefaultAbsentFor
	}
	now := f.now
	if now == nil {
		now = time.Now
	}
	go func() {
		defer close(ch)
		var (
			last         []byte
			lastErr      string
			first        = true
			missingSince time.Time
		)
		for {
			j, raw, missing, err := f.load()
			report := true
			if missing {
				if missingSince.IsZero() {
					missingSince = now()
				}
				// Missing, but not for long enough: as if unchanged.
				report = now().Sub(missingSince) >= absentFor
			} else {
				missingSince = time.Time{}
			}
			errText := ""
			if err != nil {
				errText = err.Error()
			}
			if report && (first || !bytes.Equal(raw, last) || errText != lastErr) {
				select {
				case ch <- intent.Update{Join: j, Err: err}:
				case <-ctx.Done():
					return
				}
				last, lastErr, first = raw, errText, false
			}
			if f.polled != nil {
				f.polled()
			}
			select {
			case <-time.After(interval):
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch
}
