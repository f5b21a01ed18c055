// Package ociregistry is the tests' image registry: go-containerregistry's
// in-process registry on loopback, and a push that speaks the distribution
// API directly (monolithic blob uploads, then the manifest). The push is
// ours rather than go-containerregistry's remote package, whose Docker
// credential helpers nothing else in the module needs.
package ociregistry

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Registry serves images on a free loopback port until Close.
type Registry struct {
	srv  *http.Server
	Host string // 127.0.0.1:port
}

// Start listens on a free loopback port.
func Start() (*Registry, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("test registry: %w", err)
	}
	r := &Registry{Host: l.Addr().String(), srv: &http.Server{
		Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0))),
	}}
	go r.srv.Serve(l)
	return r, nil
}

// URL is the registry's base URL ("http://127.0.0.1:port").
func (r *Registry) URL() string { return "http://" + r.Host }

// Close stops serving.
func (r *Registry) Close() error { return r.srv.Close() }

// Push stores img as repo:tag in the registry at base (an http URL).
func Push(base, repo, tag string, img v1.Image) error {
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
		if err := send(http.MethodPost, base+"/v2/"+repo+"/blobs/uploads/?digest="+d.String(), "application/octet-stream", b); err != nil {
			return fmt.Errorf("%s:%s layer %s: %w", repo, tag, d, err)
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
	if err := send(http.MethodPost, base+"/v2/"+repo+"/blobs/uploads/?digest="+cfgName.String(), "application/octet-stream", cfg); err != nil {
		return fmt.Errorf("%s:%s config: %w", repo, tag, err)
	}
	mt, err := img.MediaType()
	if err != nil {
		return err
	}
	m, err := img.RawManifest()
	if err != nil {
		return err
	}
	if err := send(http.MethodPut, base+"/v2/"+repo+"/manifests/"+tag, string(mt), m); err != nil {
		return fmt.Errorf("%s:%s manifest: %w", repo, tag, err)
	}
	return nil
}

func send(method, u, ctype string, body []byte) error {
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
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
		return fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, msg)
	}
	return nil
}
