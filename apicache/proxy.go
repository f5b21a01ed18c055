// Package apicache is the node's local caching proxy in front of the
// apiserver. The agent serves it on loopback TLS for the kubelet (and, each
// with its own kubeconfig, other node clients). Online it forwards every
// request, watches included, with the client's own credentials, and keeps
// what the client read (the cacheable resources below) on disk. Offline it
// answers reads and watches from that cache and refuses writes with 503, which
// the kubelet treats as an unreachable apiserver: it keeps its state and
// re-sends it once the apiserver answers again. See docs/offline.md.
package apicache

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apiserver/pkg/endpoints/request"
)

// cacheable are the resources a node's clients read and the cache keeps:
// the node, its lease, its pods and what they use, and what the kubelet,
// kube-proxy (Services, EndpointSlices, ServiceCIDRs) and the node DNS
// (Services, EndpointSlices, Namespaces) watch. Kinds name their list
// types for answers from an empty cache.
var cacheable = map[schema.GroupResource]string{
	{Resource: "pods"}:                                              "Pod",
	{Resource: "nodes"}:                                             "Node",
	{Resource: "configmaps"}:                                        "ConfigMap",
	{Resource: "secrets"}:                                           "Secret",
	{Resource: "services"}:                                          "Service",
	{Resource: "namespaces"}:                                        "Namespace",
	{Resource: "persistentvolumeclaims"}:                            "PersistentVolumeClaim",
	{Resource: "persistentvolumes"}:                                 "PersistentVolume",
	{Group: "coordination.k8s.io", Resource: "leases"}:              "Lease",
	{Group: "discovery.k8s.io", Resource: "endpointslices"}:         "EndpointSlice",
	{Group: "node.k8s.io", Resource: "runtimeclasses"}:              "RuntimeClass",
	{Group: "storage.k8s.io", Resource: "csidrivers"}:               "CSIDriver",
	{Group: "storage.k8s.io", Resource: "csinodes"}:                 "CSINode",
	{Group: "storage.k8s.io", Resource: "volumeattachments"}:        "VolumeAttachment",
	{Group: "resource.k8s.io", Resource: "resourceclaims"}:          "ResourceClaim",
	{Group: "networking.k8s.io", Resource: "ingressclasses"}:        "IngressClass",
	{Group: "networking.k8s.io", Resource: "servicecidrs"}:          "ServiceCIDR",
	{Group: "scheduling.k8s.io", Resource: "priorityclasses"}:       "PriorityClass",
	{Group: "certificates.k8s.io", Resource: "clustertrustbundles"}: "ClusterTrustBundle",
}

var requestInfos = &request.RequestInfoFactory{
	APIPrefixes:          sets.NewString("api", "apis"),
	GrouplessAPIPrefixes: sets.NewString("api"),
}

// Config configures a Proxy.
type Config struct {
	// Addr is where to listen; "127.0.0.1:0" picks a free loopback port.
	Addr string
	// Dir is the cache root: one 0700 directory per client. Under the
	// credential directory, so it goes when the node leaves.
	Dir     string
	Clients []Client
	Log     *logrus.Entry
	// ProbeEvery is how often the apiserver is probed (default 3 s); a
	// probe times out after ProbeTimeout (default 3 s).
	ProbeEvery, ProbeTimeout time.Duration
	// QuietFor: while online, a probe is skipped if the apiserver
	// answered a forwarded request within this long (default 15 s, more
	// than the kubelet's 10 s Lease renewals): a fleet of idle devices
	// then costs the apiserver no probes, and an outage is still noticed
	// by the first forwarded request that fails or, with none, by the
	// next probe.
	QuietFor time.Duration
	// DialTimeout bounds one upstream connect (default 5 s).
	DialTimeout time.Duration
	// OnReconnect runs (in its own goroutine) when the apiserver answers
	// again after the proxy was offline, with the client that answered.
	OnReconnect func(c Client, offlineFor time.Duration, rc *RestConfig)
}

// Proxy is the caching proxy.
type Proxy struct {
	cfg     Config
	log     *logrus.Entry
	clients []*client
	ln      net.Listener
	srv     *http.Server
	caPEM   []byte

	mu           sync.Mutex
	online       bool
	lastContact  time.Time
	offlineSince time.Time
	flip         chan struct{} // closed (and replaced) at every online/offline change
	known        bool          // a probe or request has told online from offline

	hits, misses, forwarded, reconnects atomic.Uint64
}

// New opens the clients' caches and listens; Serve serves.
func New(cfg Config) (*Proxy, error) {
	if cfg.Log == nil {
		cfg.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	if cfg.ProbeEvery == 0 {
		cfg.ProbeEvery = 3 * time.Second
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = 3 * time.Second
	}
	if cfg.QuietFor == 0 {
		cfg.QuietFor = 15 * time.Second
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	p := &Proxy{cfg: cfg, log: cfg.Log, flip: make(chan struct{})}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	for _, c := range cfg.Clients {
		st, err := OpenStore(filepath.Join(cfg.Dir, c.Name))
		if err != nil {
			return nil, fmt.Errorf("cache of %s: %w", c.Name, err)
		}
		p.clients = append(p.clients, &client{Client: c, store: st})
	}
	p.lastContact = readContact(cfg.Dir)
	tlsCert, caPEM, err := selfSigned()
	if err != nil {
		return nil, err
	}
	p.caPEM = caPEM
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, err
	}
	p.ln = ln
	p.srv = &http.Server{
		Handler: p,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{tlsCert},
			// Which client it is, is decided per request by the key of
			// the certificate (authenticate); no CA is trusted here.
			ClientAuth: tls.RequireAnyClientCert,
			MinVersion: tls.VersionTLS12,
		},
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          nil,
	}
	return p, nil
}

// Addr is the address the proxy listens on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Run probes the apiserver once, then serves until ctx ends.
func (p *Proxy) Run(ctx context.Context) error {
	p.probeOnce(ctx)
	go p.probeLoop(ctx)
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = p.srv.Shutdown(sctx)
		_ = p.srv.Close()
	}()
	err := p.srv.ServeTLS(p.ln, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Online reports whether the apiserver answered last.
func (p *Proxy) Online() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.online
}

// knownOffline: a probe or a request found the apiserver unreachable and
// none has answered since.
func (p *Proxy) knownOffline() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.known && !p.online
}

// flipped is closed at the next online/offline change.
func (p *Proxy) flipped() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.flip
}

// contact records an answer from the apiserver through c.
func (p *Proxy) contact(c *client) {
	now := time.Now()
	p.mu.Lock()
	was, first := p.online, !p.known
	p.online, p.known = true, true
	p.lastContact = now
	offlineFor := now.Sub(p.offlineSince)
	if !was {
		close(p.flip)
		p.flip = make(chan struct{})
	}
	p.mu.Unlock()
	if was {
		return
	}
	writeContact(p.cfg.Dir, now)
	if first {
		return // started online: nothing to reconnect
	}
	p.reconnects.Add(1)
	p.log.WithField("offline_for", offlineFor.Round(time.Second)).Info("apiserver reachable; forwarding again, cache-served watches end")
	if p.cfg.OnReconnect != nil && c != nil {
		if up, err := c.load(p.cfg.DialTimeout); err == nil {
			go p.cfg.OnReconnect(c.Client, offlineFor, &RestConfig{Config: up.rest})
		}
	}
}

// lost records that the apiserver did not answer.
func (p *Proxy) lost(err error) {
	p.mu.Lock()
	was, first := p.online, !p.known
	p.online, p.known = false, true
	if was {
		p.offlineSince = time.Now()
		close(p.flip)
		p.flip = make(chan struct{})
	}
	if first {
		// Started offline: cut off since the last answer before the
		// restart, if one is known.
		p.offlineSince = p.lastContact
		if p.offlineSince.IsZero() {
			p.offlineSince = time.Now()
		}
	}
	last := p.lastContact
	p.mu.Unlock()
	if first {
		p.log.WithError(err).Warn("apiserver unreachable at start; serving from the cache")
	}
	if !was {
		return
	}
	writeContact(p.cfg.Dir, last)
	for _, c := range p.clients {
		c.closeConns()
	}
	p.log.WithError(err).Warn("apiserver unreachable; serving from the cache")
}

func (p *Proxy) probeLoop(ctx context.Context) {
	t := time.NewTicker(p.cfg.ProbeEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if p.needProbe(time.Now()) {
				p.probeOnce(ctx)
			}
		}
	}
}

// needProbe: offline or not yet known, always; online, only when no
// forwarded request has been answered for QuietFor.
func (p *Proxy) needProbe(now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.known || !p.online || now.Sub(p.lastContact) >= p.cfg.QuietFor
}

// probeOnce asks the apiserver through the first client that has
// credentials; with none (not joined yet) the state stays as it is.
func (p *Proxy) probeOnce(ctx context.Context) {
	for _, c := range p.clients {
		up, err := c.load(p.cfg.DialTimeout)
		if err != nil {
			continue
		}
		if err := c.probe(ctx, up, p.cfg.ProbeTimeout); err != nil {
			if ctx.Err() == nil {
				p.lost(err)
			}
		} else {
			p.contact(c)
		}
		return
	}
}

// Stats is what status and metrics show.
type Stats struct {
	Online      bool
	LastContact time.Time // zero: never
	Objects     int
	// Hits are reads answered from the cache offline, Misses reads it
	// could not answer; Forwarded requests went to the apiserver.
	Hits, Misses, Forwarded, Reconnects uint64
}

func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	s := Stats{Online: p.online, LastContact: p.lastContact}
	p.mu.Unlock()
	for _, c := range p.clients {
		s.Objects += c.store.Len()
	}
	s.Hits, s.Misses, s.Forwarded, s.Reconnects = p.hits.Load(), p.misses.Load(), p.forwarded.Load(), p.reconnects.Load()
	return s
}

// ServeHTTP authenticates the caller by its client certificate, then
// forwards or answers from the cache.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, up := p.authenticate(r)
	if c == nil {
		writeStatus(w, r, http.StatusUnauthorized, "Unauthorized", "evelet apicache: "+errNoClient.Error())
		return
	}
	info, err := requestInfos.NewRequestInfo(r)
	if err != nil {
		writeStatus(w, r, http.StatusBadRequest, "BadRequest", err.Error())
		return
	}
	if p.knownOffline() {
		p.serveCache(w, r, c, info)
		return
	}
	// Online, or not probed yet (the kubelet moved onto the proxy right
	// after it got its certificate): forward. A failure turns the proxy
	// offline and answers from the cache; answering from a cache never
	// checked against the apiserver could tell the kubelet its pods are
	// gone.
	p.forward(w, r, c, up, info)
}

func (p *Proxy) authenticate(r *http.Request) (*client, *upstream) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, nil
	}
	for _, c := range p.clients {
		up, err := c.load(p.cfg.DialTimeout)
		if err != nil {
			continue
		}
		if up.presents(r.TLS.PeerCertificates[0]) {
			return c, up
		}
	}
	return nil, nil
}

// forward sends r upstream with c's credentials. A connection failure
// turns the proxy offline and, for a read, answers from the cache.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, c *client, up *upstream, info *request.RequestInfo) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	if info.Verb == "watch" {
		// A watch forwarded while online ends when the proxy goes
		// offline, so the client re-watches from the cache at once.
		flip := p.flipped()
		go func() {
			select {
			case <-flip:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	r = r.WithContext(ctx)
	tok, err := tokenRequestKey(r, info)
	if err != nil {
		writeStatus(w, r, http.StatusBadRequest, "BadRequest", err.Error())
		return
	}
	p.forwarded.Add(1)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(up.url)
			pr.Out.URL.Path, pr.Out.URL.RawPath = pr.In.URL.Path, pr.In.URL.RawPath
			// The client's upstream identity is its kubeconfig's,
			// nothing it sends on loopback.
			pr.Out.Header.Del("Authorization")
			for k := range pr.Out.Header {
				if len(k) > 12 && http.CanonicalHeaderKey(k[:12]) == "Impersonate-" {
					pr.Out.Header.Del(k)
				}
			}
		},
		Transport:     up.rt,
		FlushInterval: -1,
		ModifyResponse: func(resp *http.Response) error {
			p.contact(c)
			p.teeResponse(c, info, tok, resp)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				// The client went away, or the proxy went offline
				// under a watch (the client re-watches, from the
				// cache): not the apiserver's failure.
				return
			}
			p.lost(err)
			p.serveCache(w, r, c, info)
		},
		ErrorLog: nil,
	}
	rp.ServeHTTP(w, r)
}
