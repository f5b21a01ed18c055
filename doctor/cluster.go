package doctor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/lf-edge/evelet/bootstrap"
	"github.com/lf-edge/evelet/internal/layout"
	"k8s.io/apimachinery/pkg/util/version"
)

// Clock skew limits: the Date header has one-second resolution; beyond a
// minute, fresh certificates look not-yet-valid and leases look stale.
const (
	skewWarn = 5 * time.Second
	skewFail = time.Minute
)

// maxKubeletLag is Kubernetes' skew policy: a kubelet may be up to three
// minor versions older than the apiserver, and never newer.
const maxKubeletLag = 3

// probe is one unauthenticated GET /version to the joined apiserver.
type probe struct {
	url       string
	err       error // no answer at all
	tlsErr    error // answered, but its certificate does not verify against the cluster CA
	date      time.Time
	rtt       time.Duration
	sentAt    time.Time
	version   string
	notJoined bool
}

// Cluster checks the apiserver of the join record: reachable with a
// certificate the cluster CA signed, its clock against ours, and its
// version against the vendored kubelet's.
func Cluster(ctx context.Context, cfg Config) []Result {
	cfg.defaults()
	p := probeAPIServer(ctx, cfg)
	return []Result{reachable(p), clockSkew(p), versionSkew(p, cfg.KubeletVersion)}
}

func probeAPIServer(ctx context.Context, cfg Config) probe {
	store := bootstrap.Store{Dir: layout.State{Dir: cfg.StateDir}.Credentials().Dir}
	rec, err := store.Record()
	if err != nil {
		return probe{err: err}
	}
	if rec == nil {
		return probe{notJoined: true, err: fmt.Errorf("no join record at %s", layout.State{Dir: cfg.StateDir}.Credentials().JoinRecord())}
	}
	p := probe{url: rec.APIServer}
	u, err := url.Parse(rec.APIServer)
	if err != nil {
		p.err = err
		return p
	}
	host := u.Hostname()
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(store.ClusterCAPath())
	if err == nil && !pool.AppendCertsFromPEM(caPEM) {
		err = fmt.Errorf("%s holds no certificate", store.ClusterCAPath())
	}
	if err != nil {
		p.err = fmt.Errorf("cluster CA: %w", err)
		return p
	}
	// The chain is verified by hand, so that a clock far off (which makes
	// every certificate look expired) still gets the server's Date header
	// to show it. Nothing is sent but GET /version, and the version is
	// believed only when the chain verified.
	tc := &tls.Config{
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			p.tlsErr = verifyChain(raw, pool, host, cfg.Now())
			return nil
		},
	}
	tr := &http.Transport{TLSClientConfig: tc, Proxy: nil}
	defer tr.CloseIdleConnections()
	client := &http.Client{Timeout: cfg.Timeout, Transport: tr}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rec.APIServer+"/version", nil)
	if err != nil {
		p.err = err
		return p
	}
	p.sentAt = cfg.Now()
	resp, err := client.Do(req)
	p.rtt = cfg.Now().Sub(p.sentAt)
	if err != nil {
		p.err = err
		return p
	}
	defer resp.Body.Close()
	if d, err := http.ParseTime(resp.Header.Get("Date")); err == nil {
		p.date = d
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64*1024))
	if resp.StatusCode != http.StatusOK {
		p.err = fmt.Errorf("GET %s/version: %s", rec.APIServer, resp.Status)
		return p
	}
	var v struct {
		GitVersion string `json:"gitVersion"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		p.err = fmt.Errorf("GET %s/version: %w", rec.APIServer, err)
		return p
	}
	p.version = v.GitVersion
	return p
}

func verifyChain(raw [][]byte, roots *x509.CertPool, host string, now time.Time) error {
	if len(raw) == 0 {
		return errors.New("no certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, b := range raw {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return err
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: host, CurrentTime: now})
	return err
}

const notJoinedFix = "nothing to do before the device joins: the agent writes it once the controller sends the cluster (or --join-file names one)"

func reachable(p probe) Result {
	r := Result{Check: "apiserver"}
	switch {
	case p.notJoined:
		return warn(r, "not joined: "+p.err.Error(), notJoinedFix)
	case p.err != nil && p.url == "":
		return fail(r, p.err.Error(), "the credentials directory is damaged: remove the device from the cluster in the controller and add it again (the agent wipes and rejoins)")
	case p.err != nil:
		return fail(r, fmt.Sprintf("%s: %v", p.url, p.err),
			"check the device's route and firewall to the apiserver, that the apiserver runs, and that its address did not change (the controller sends the new one)")
	case p.tlsErr != nil:
		return fail(r, fmt.Sprintf("%s answers, but its certificate does not verify against the cluster CA: %v", p.url, p.tlsErr),
			"if the clock check also fails, fix the clock (NTP); else the cluster's CA changed: remove the device from the cluster and add it again")
	}
	return ok(r, fmt.Sprintf("%s answered GET /version in %s (certificate verified)", p.url, p.rtt.Round(time.Millisecond)))
}

func clockSkew(p probe) Result {
	r := Result{Check: "clock"}
	if p.date.IsZero() {
		if p.notJoined {
			return warn(r, "not checked: not joined", notJoinedFix)
		}
		return warn(r, "not checked: no Date header from the apiserver", "see the apiserver check")
	}
	// The server stamped its Date somewhere during the round trip, and
	// truncated it to the second: compare the middles.
	local := p.sentAt.Add(p.rtt / 2)
	skew := local.Sub(p.date.Add(500 * time.Millisecond))
	abs := skew.Abs()
	found := fmt.Sprintf("local clock is %s %s the apiserver's (Date header, 1s resolution)", abs.Round(100*time.Millisecond), map[bool]string{true: "ahead of", false: "behind"}[skew >= 0])
	fix := "synchronise the device's clock (EVE's NTP servers in its controller config) and the control plane's"
	switch {
	case abs > skewFail:
		return fail(r, found+": certificates and leases go wrong", fix)
	case abs > skewWarn+p.rtt:
		return warn(r, found, fix)
	}
	return ok(r, found)
}

func versionSkew(p probe, kubelet string) Result {
	r := Result{Check: "version-skew"}
	if p.version == "" || p.tlsErr != nil {
		if p.notJoined {
			return warn(r, "not checked: not joined", notJoinedFix)
		}
		return warn(r, "not checked: no verified /version from the apiserver", "see the apiserver check")
	}
	kv, err := version.ParseGeneric(kubelet)
	if err != nil {
		return fail(r, fmt.Sprintf("vendored kubelet version %q: %v", kubelet, err), "a release build stamps the kubelet version (make build)")
	}
	av, err := version.ParseGeneric(p.version)
	if err != nil {
		return fail(r, fmt.Sprintf("apiserver version %q: %v", p.version, err), "check that the join record names a Kubernetes apiserver")
	}
	found := fmt.Sprintf("kubelet %s, apiserver %s", kubelet, p.version)
	lag := int(av.Minor()) - int(kv.Minor())
	switch {
	case av.Major() != kv.Major():
		return fail(r, found+": different major versions", "run an evelet whose kubelet matches the cluster's major version")
	case lag < 0:
		return fail(r, found+": the kubelet is newer than the apiserver, which Kubernetes does not support",
			"upgrade the control plane first, or run an evelet release with a kubelet no newer than "+fmt.Sprintf("v%d.%d", av.Major(), av.Minor()))
	case lag > maxKubeletLag:
		return fail(r, fmt.Sprintf("%s: the kubelet is %d minor versions older (at most %d supported)", found, lag, maxKubeletLag),
			fmt.Sprintf("upgrade evelet to a release whose kubelet is at least v%d.%d", av.Major(), av.Minor()-maxKubeletLag))
	}
	return ok(r, fmt.Sprintf("%s: within the supported skew (kubelet up to %d minor versions older)", found, maxKubeletLag))
}
