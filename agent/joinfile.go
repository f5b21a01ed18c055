package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/lf-edge/evelet/agent/intent"

	"github.com/lf-edge/evelet/bootstrap"
	"sigs.k8s.io/yaml"
)

// JoinFile is a Source reading a YAML file (see docs/join-file.md). It
// polls instead of using inotify so that editors' rename-into-place and
// bind mounts behave the same.
type JoinFile struct {
	Path     string
	Interval time.Duration
}

func (f *JoinFile) Name() string { return "join-file " + f.Path }

// Load parses the join file. A missing file means "not in a cluster".
func (f *JoinFile) Load() (*intent.Join, []byte, error) {
	b, err := os.ReadFile(f.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	j, err := ParseJoin(b)
	return j, b, err
}

// ParseJoin strictly decodes a join file: unknown fields are an error so
// a typo ("caCertHash") does not silently join unpinned.
func ParseJoin(b []byte) (*intent.Join, error) {
	var j intent.Join
	if err := yaml.UnmarshalStrict(b, &j); err != nil {
		return nil, &bootstrap.PermanentError{Err: fmt.Errorf("join file: %w", err)}
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
	go func() {
		defer close(ch)
		var last []byte
		first := true
		for {
			j, raw, err := f.Load()
			if first || !bytes.Equal(raw, last) {
				select {
				case ch <- intent.Update{Join: j, Err: err}:
				case <-ctx.Done():
					return
				}
				last, first = raw, false
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
