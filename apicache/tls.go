package apicache

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/lf-edge/evelet/internal/atomicfile"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// RestConfig is a client's upstream configuration, for work the agent does
// with the client's identity (the Node event on reconnect).
type RestConfig struct{ *rest.Config }

// selfSigned makes the proxy's serving certificate for 127.0.0.1, new at
// every start: only kubeconfigs the agent writes for this run trust it.
// Written here because client-go's cert helpers make RSA keys and files;
// this is the standard library's x509 in a few lines.
func selfSigned() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "evelet-apicache"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	return c, certPEM, err
}

// WriteKubeconfig writes, to path (0600), a kubeconfig for client name
// that points at the proxy: this run's serving CA, and the same client
// certificate and key (files, so the client's own rotation carries over)
// as the client's upstream kubeconfig.
func (p *Proxy) WriteKubeconfig(name, path string) error {
	var c *client
	for _, x := range p.clients {
		if x.Name == name {
			c = x
		}
	}
	if c == nil {
		return fmt.Errorf("apicache has no client %q", name)
	}
	up, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		return err
	}
	ctx := up.Contexts[up.CurrentContext]
	if ctx == nil || up.AuthInfos[ctx.AuthInfo] == nil {
		return fmt.Errorf("kubeconfig %s has no current user", c.Kubeconfig)
	}
	ai := up.AuthInfos[ctx.AuthInfo].DeepCopy()
	ai.LocationOfOrigin = ""
	for _, f := range []*string{&ai.ClientCertificate, &ai.ClientKey} {
		if *f != "" && !filepath.IsAbs(*f) {
			*f = filepath.Join(filepath.Dir(c.Kubeconfig), *f)
		}
	}
	cfg := clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"apicache": {Server: "https://" + p.Addr(), CertificateAuthorityData: p.caPEM}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{name: ai},
		Contexts:       map[string]*clientcmdapi.Context{"apicache": {Cluster: "apicache", AuthInfo: name}},
		CurrentContext: "apicache",
	}
	b, err := clientcmd.Write(cfg)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, b, 0o600)
}

// The time of the last answer from the apiserver survives a reboot, so
// status says how long the node has been cut off, not since when the
// agent runs.
func contactPath(dir string) string { return filepath.Join(dir, "last-contact") }

func readContact(dir string) time.Time {
	b, err := os.ReadFile(contactPath(dir))
	if err != nil {
		return time.Time{}
	}
	t, _ := time.Parse(time.RFC3339Nano, string(b))
	return t
}

func writeContact(dir string, t time.Time) {
	if t.IsZero() {
		return
	}
	_ = atomicfile.WriteFile(contactPath(dir), []byte(t.UTC().Format(time.RFC3339Nano)), 0o600)
}
