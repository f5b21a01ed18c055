package critest

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Registry is an in-process OCI registry on loopback (go-containerregistry's
// pkg/registry) serving critest's images under their upstream repository
// paths; containerd reaches it as a mirror of the upstream hosts.
type Registry struct {
	srv  *http.Server
	Host string // 127.0.0.1:port
}

// StartRegistry listens on a free loopback port.
func StartRegistry() (*Registry, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("critest registry: %w", err)
	}
	r := &Registry{Host: l.Addr().String(), srv: &http.Server{
		Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0))),
	}}
	go r.srv.Serve(l)
	return r, nil
}

// URL is the mirror endpoint for containerd.
func (r *Registry) URL() string { return "http://" + r.Host }

// Push stores img under ref's repository path and tag (the upstream host
// is dropped: one registry mirrors every host). It speaks the registry API
// directly (monolithic blob uploads, then the manifest) rather than through
// go-containerregistry's remote package, whose Docker credential helpers
// the module does not otherwise need.
func (r *Registry) Push(ref string, img v1.Image) error {
	host, path, ok := strings.Cut(ref, "/")
	if !ok || !strings.Contains(host, ".") {
		return fmt.Errorf("critest registry: %q has no registry host", ref)
	}
	i := strings.LastIndexByte(path, ':')
	if i < strings.LastIndexByte(path, '/') {
		return fmt.Errorf("critest registry: %q has no tag", ref)
	}
	repo, tag := path[:i], path[i+1:]
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		if err := r.send(http.MethodPost, "/v2/"+repo+"/blobs/uploads/?digest="+d.String(), "application/octet-stream", b); err != nil {
			return fmt.Errorf("critest registry: %s layer: %w", ref, err)
		}
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	if err := r.send(http.MethodPost, "/v2/"+repo+"/blobs/uploads/?digest="+cfgName.String(), "application/octet-stream", cfg); err != nil {
		return fmt.Errorf("critest registry: %s config: %w", ref, err)
	}
	mt, err := img.MediaType()
	if err != nil {
		return err
	}
	m, err := img.RawManifest()
	if err != nil {
		return err
	}
	if err := r.send(http.MethodPut, "/v2/"+repo+"/manifests/"+tag, string(mt), m); err != nil {
		return fmt.Errorf("critest registry: %s manifest: %w", ref, err)
	}
	return nil
}

func (r *Registry) send(method, path, ctype string, body []byte) error {
	req, err := http.NewRequest(method, r.URL()+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", ctype)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, msg)
	}
	return nil
}

// Close stops serving.
func (r *Registry) Close() error { return r.srv.Close() }
