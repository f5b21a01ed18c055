package apicache

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/connrotation"
)

// Client is one local program the proxy serves. Its own kubeconfig to the
// real apiserver is both its identity upstream (the proxy forwards with
// exactly these credentials, so NodeRestriction and RBAC see the client, not
// the proxy) and how the proxy recognises it on loopback: it must present
// the client certificate that kubeconfig names, re-read when it rotates.
type Client struct {
	// Name names its cache directory and its metrics ("kubelet").
	Name string
	// Kubeconfig is the client's kubeconfig to the real apiserver, with a
	// client certificate (files are re-read when they change).
	Kubeconfig string
}

// client is a Client with its loaded upstream connection and cache.
type client struct {
	Client
	store *Store

	mu    sync.Mutex
	stamp string // kubeconfig + certificate file identity the fields below come from
	// quick is the kubeconfig's and the certificate file's stat identity
	// at the last load: while both are unchanged, load answers without
	// parsing the kubeconfig or reading the certificate (it runs for every
	// proxied request).
	quick    string
	certPath string
	upURL    *url.URL
	rt       http.RoundTripper
	dialer   *connrotation.Dialer
	certKey  []byte // the client certificate's public key (PKIX DER)
	rest     *rest.Config
}

// upstream is what the proxy needs to forward one request for c.
type upstream struct {
	url     *url.URL
	rt      http.RoundTripper
	certKey []byte
	rest    *rest.Config
}

// load returns c's upstream, re-reading its kubeconfig and certificate when
// either changed on disk (the kubelet rotates its certificate by replacing
// the file kubelet-client-current.pem points to).
func (c *client) load(dialTimeout time.Duration) (*upstream, error) {
	c.mu.Lock()
	certPath := c.certPath
	c.mu.Unlock()
	quick := quickStamp(c.Kubeconfig, certPath)
	c.mu.Lock()
	if c.rt != nil && quick != "" && quick == c.quick {
		up := &upstream{url: c.upURL, rt: c.rt, certKey: c.certKey, rest: c.rest}
		c.mu.Unlock()
		return up, nil
	}
	c.mu.Unlock()
	// Stat before reading: a file replaced after its stat makes the next
	// quick check differ, never a stale answer.
	kubeconfigStamp := fileStamp(c.Kubeconfig)
	cfg, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig of %s: %w", c.Name, err)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if ctx == nil || cfg.AuthInfos[ctx.AuthInfo] == nil || cfg.Clusters[ctx.Cluster] == nil {
		return nil, fmt.Errorf("kubeconfig of %s has no current context", c.Name)
	}
	ai := cfg.AuthInfos[ctx.AuthInfo]
	certPEM := ai.ClientCertificateData
	stamp := kubeconfigStamp
	quick = kubeconfigStamp
	if ai.ClientCertificate != "" {
		quick += "|" + fileStamp(ai.ClientCertificate)
		if certPEM, err = os.ReadFile(ai.ClientCertificate); err != nil {
			return nil, fmt.Errorf("client certificate of %s: %w", c.Name, err)
		}
		stamp += "|" + fileStamp(ai.ClientCertificate) + "|" + string(certPEM)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.certPath, c.quick = ai.ClientCertificate, quick
	if c.rt != nil && stamp == c.stamp {
		return &upstream{url: c.upURL, rt: c.rt, certKey: c.certKey, rest: c.rest}, nil
	}
	certs, err := certutil.ParseCertsPEM(certPEM)
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("kubeconfig of %s: no client certificate: %v", c.Name, err)
	}
	rc, err := clientcmd.NewNonInteractiveClientConfig(*cfg, cfg.CurrentContext, &clientcmd.ConfigOverrides{}, nil).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig of %s: %w", c.Name, err)
	}
	u, err := url.Parse(rc.Host)
	if err != nil {
		return nil, err
	}
	// Our own dialer, so going offline can drop every upstream connection
	// at once (the kubelet does the same on a failed heartbeat): a stuck
	// HTTP/2 connection would otherwise hold requests for a minute.
	d := connrotation.NewDialer((&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext)
	rc.Dial = d.DialContext
	rt, err := rest.TransportFor(rc)
	if err != nil {
		return nil, err
	}
	if c.dialer != nil {
		c.dialer.CloseAll()
	}
	c.stamp, c.upURL, c.rt, c.dialer, c.certKey, c.rest = stamp, u, rt, d, certs[0].RawSubjectPublicKeyInfo, rc
	return &upstream{url: u, rt: rt, certKey: c.certKey, rest: rc}, nil
}

// closeConns drops every upstream connection of c.
func (c *client) closeConns() {
	c.mu.Lock()
	d := c.dialer
	c.mu.Unlock()
	if d != nil {
		d.CloseAll()
	}
}

// presents reports whether cert (the loopback peer's) carries the key of
// c's current client certificate.
func (up *upstream) presents(cert *x509.Certificate) bool {
	return cert != nil && bytes.Equal(cert.RawSubjectPublicKeyInfo, up.certKey)
}

// quickStamp is the stat identity of a kubeconfig and the certificate
// file it names (none when it embeds its certificate); "" when one is
// missing, which always takes the full load (and its error).
func quickStamp(kubeconfig, cert string) string {
	q := fileStamp(kubeconfig)
	if cert != "" {
		q += "|" + fileStamp(cert)
	}
	if strings.Contains(q, "missing") {
		return ""
	}
	return q
}

func fileStamp(p string) string {
	st, err := os.Stat(p)
	if err != nil {
		return "missing"
	}
	ino := uint64(0)
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		ino = s.Ino
	}
	return fmt.Sprintf("%d:%d:%d", st.ModTime().UnixNano(), st.Size(), ino)
}

// probe asks the apiserver's /readyz with c's credentials; any HTTP answer
// means the apiserver is reachable.
func (c *client) probe(ctx context.Context, up *upstream, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	u := *up.url
	u.Path = "/readyz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	resp, err := up.rt.RoundTrip(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

var errNoClient = errors.New("no client certificate matches a client of the cache")
