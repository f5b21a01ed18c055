package critest

import (
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/lf-edge/evelet/tests/internal/ociregistry"
)

// Registry serves critest's images under their upstream repository paths;
// containerd reaches it as a mirror of the upstream hosts.
type Registry struct{ *ociregistry.Registry }

// StartRegistry listens on a free loopback port.
func StartRegistry() (*Registry, error) {
	r, err := ociregistry.Start()
	if err != nil {
		return nil, err
	}
	return &Registry{r}, nil
}

// Push stores img under ref's repository path and tag (the upstream host
// is dropped: one registry mirrors every host).
func (r *Registry) Push(ref string, img v1.Image) error {
	host, path, ok := strings.Cut(ref, "/")
	if !ok || !strings.Contains(host, ".") {
		return fmt.Errorf("critest registry: %q has no registry host", ref)
	}
	i := strings.LastIndexByte(path, ':')
	if i < strings.LastIndexByte(path, '/') {
		return fmt.Errorf("critest registry: %q has no tag", ref)
	}
	return ociregistry.Push(r.URL(), path[:i], path[i+1:], img)
}
