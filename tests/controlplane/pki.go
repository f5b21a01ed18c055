package controlplane

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
)

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
	// backdate keeps freshly issued certificates valid for a peer whose
	// clock is a little behind.
	backdate = 5 * time.Minute
)

// authority is the cluster CA: it signs every certificate of the control
// plane and, through the controller-manager, the nodes' client certificates.
type authority struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
}

// newKey makes the private key of every certificate and of the service
// account signer. ECDSA P-256 keeps generation instantaneous.
func newKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func serialNumber() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// loadOrCreateCA reuses the CA <name>.crt/.key of an earlier run found in
// pkiDir (so that a demo restarted on the same directory keeps its CA pin),
// or makes a new one.
func loadOrCreateCA(pkiDir, name, commonName string) (*authority, error) {
	certPath, keyPath := filepath.Join(pkiDir, name+".crt"), filepath.Join(pkiDir, name+".key")
	if ca, err := loadCA(certPath, keyPath); err == nil {
		return ca, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("controlplane: existing CA in %s is unusable (remove it): %w", pkiDir, err)
	}
	key, err := newKey()
	if err != nil {
		return nil, fmt.Errorf("controlplane: CA key: %w", err)
	}
	sn, err := serialNumber()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("controlplane: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca := &authority{cert: cert, key: key, certPEM: encodeCert(cert)}
	if err := writeKeyPair(pkiDir, name, cert, key); err != nil {
		return nil, err
	}
	return ca, nil
}

func loadCA(certPath, keyPath string) (*authority, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	certs, err := certutil.ParseCertsPEM(certPEM)
	if err != nil {
		return nil, err
	}
	key, err := keyutil.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s is not a signing key", keyPath)
	}
	if !certs[0].IsCA || time.Now().After(certs[0].NotAfter) {
		return nil, fmt.Errorf("%s is not a valid CA certificate", certPath)
	}
	return &authority{cert: certs[0], key: signer, certPEM: encodeCert(certs[0])}, nil
}

// leafSpec describes a certificate the CA issues.
type leafSpec struct {
	commonName string
	orgs       []string
	dnsNames   []string
	ips        []net.IP
	usages     []x509.ExtKeyUsage
}

// issue makes a new key and a certificate for it.
func (ca *authority) issue(s leafSpec) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	sn, err := serialNumber()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: s.commonName, Organization: s.orgs},
		DNSNames:     s.dnsNames,
		IPAddresses:  s.ips,
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(leafValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  s.usages,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("controlplane: issuing %q: %w", s.commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func encodeCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: certutil.CertificateBlockType, Bytes: c.Raw})
}

func encodeKey(k crypto.Signer) ([]byte, error) {
	return keyutil.MarshalPrivateKeyToPEM(k)
}

// writeKeyPair writes <dir>/<name>.crt and <dir>/<name>.key.
func writeKeyPair(dir, name string, cert *x509.Certificate, key crypto.Signer) error {
	keyPEM, err := encodeKey(key)
	if err != nil {
		return fmt.Errorf("controlplane: encoding %s key: %w", name, err)
	}
	if err := writePrivate(filepath.Join(dir, name+".key"), keyPEM); err != nil {
		return err
	}
	return writePrivate(filepath.Join(dir, name+".crt"), encodeCert(cert))
}

// writePrivate writes a file readable by its owner only, whatever the mode
// of an earlier file at that path.
func writePrivate(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	return nil
}

// loadOrCreateServiceAccountKey reuses sa.key of an earlier run (tokens in a
// kept etcd stay valid), or makes a new one; it (re)writes sa.pub.
func loadOrCreateServiceAccountKey(pkiDir string) error {
	keyPath := filepath.Join(pkiDir, "sa.key")
	var signer crypto.Signer
	if b, err := os.ReadFile(keyPath); err == nil {
		k, err := keyutil.ParsePrivateKeyPEM(b)
		if err != nil {
			return fmt.Errorf("controlplane: existing %s is unusable (remove it): %w", keyPath, err)
		}
		var ok bool
		if signer, ok = k.(crypto.Signer); !ok {
			return fmt.Errorf("controlplane: %s is not a signing key", keyPath)
		}
	} else {
		k, err := newKey()
		if err != nil {
			return err
		}
		keyPEM, err := encodeKey(k)
		if err != nil {
			return err
		}
		if err := writePrivate(keyPath, keyPEM); err != nil {
			return err
		}
		signer = k
	}
	der, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return fmt.Errorf("controlplane: service account public key: %w", err)
	}
	return writePrivate(filepath.Join(pkiDir, "sa.pub"),
		pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// firstServiceIP is the address the apiserver's "kubernetes" Service gets:
// the first host address of the service CIDR.
func firstServiceIP(cidr string) (net.IP, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return nil, fmt.Errorf("controlplane: service CIDR %q: %w", cidr, err)
	}
	a := p.Masked().Addr().Next()
	if !p.Contains(a) {
		return nil, fmt.Errorf("controlplane: service CIDR %q is too small", cidr)
	}
	return net.IP(a.AsSlice()), nil
}

// apiserverSANs are the names and addresses the apiserver's serving
// certificate is valid for.
func apiserverSANs(advertise net.IP, serviceIP net.IP, extra []string) ([]string, []net.IP) {
	dns := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc.cluster.local"}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback, serviceIP}
	add := func(ip net.IP) {
		for _, have := range ips {
			if have.Equal(ip) {
				return
			}
		}
		ips = append(ips, ip)
	}
	add(advertise)
	for _, e := range extra {
		if ip := net.ParseIP(e); ip != nil {
			add(ip)
		} else {
			dns = append(dns, e)
		}
	}
	return dns, ips
}

// kubeconfig renders a kubeconfig with an embedded client certificate.
func kubeconfig(server string, caPEM []byte, user string, cert *x509.Certificate, key crypto.Signer) ([]byte, error) {
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	const cluster = "kubernetes"
	ctxName := user + "@" + cluster
	cfg := clientcmdapi.Config{
		Clusters: map[string]*clientcmdapi.Cluster{cluster: {
			Server:                   server,
			CertificateAuthorityData: caPEM,
		}},
		AuthInfos: map[string]*clientcmdapi.AuthInfo{user: {
			ClientCertificateData: encodeCert(cert),
			ClientKeyData:         keyPEM,
		}},
		Contexts:       map[string]*clientcmdapi.Context{ctxName: {Cluster: cluster, AuthInfo: user}},
		CurrentContext: ctxName,
	}
	return clientcmd.Write(cfg)
}

// clusterInfoKubeconfig is the kubeconfig kubeadm publishes in
// kube-public/cluster-info: one cluster, named "", with the server URL and
// the CA, and nothing else.
func clusterInfoKubeconfig(server string, caPEM []byte) ([]byte, error) {
	return clientcmd.Write(clientcmdapi.Config{
		Clusters: map[string]*clientcmdapi.Cluster{"": {
			Server:                   server,
			CertificateAuthorityData: caPEM,
		}},
	})
}

// writePKI makes every key, certificate and kubeconfig of the control plane
// under c.dir.
func (c *ControlPlane) writePKI() error {
	pkiDir := c.path("pki")
	ca, err := loadOrCreateCA(pkiDir, "ca", "kubernetes")
	if err != nil {
		return err
	}
	c.ca = ca
	// The front proxy's CA and client certificate, as kubeadm makes them:
	// without a requestheader CA in kube-system/extension-apiserver-
	// authentication the controller-manager and the scheduler log errors
	// forever, and aggregated APIs could not work.
	fp, err := loadOrCreateCA(pkiDir, "front-proxy-ca", "front-proxy-ca")
	if err != nil {
		return err
	}
	cert, key, err := fp.issue(leafSpec{
		commonName: "front-proxy-client",
		usages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return err
	}
	if err := writeKeyPair(pkiDir, "front-proxy-client", cert, key); err != nil {
		return err
	}
	serviceIP, err := firstServiceIP(c.o.ServiceCIDR)
	if err != nil {
		return err
	}
	dns, ips := apiserverSANs(c.advertise, serviceIP, c.o.ExtraSANs)
	cert, key, err = ca.issue(leafSpec{
		commonName: "kube-apiserver",
		dnsNames:   dns,
		ips:        ips,
		usages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return err
	}
	if err := writeKeyPair(pkiDir, "apiserver", cert, key); err != nil {
		return err
	}
	cert, key, err = ca.issue(leafSpec{
		commonName: "kube-apiserver-kubelet-client",
		orgs:       []string{"system:masters"},
		usages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return err
	}
	if err := writeKeyPair(pkiDir, "apiserver-kubelet-client", cert, key); err != nil {
		return err
	}
	if err := loadOrCreateServiceAccountKey(pkiDir); err != nil {
		return err
	}

	for _, kc := range []struct {
		file, user string
		orgs       []string
		admin      bool
	}{
		{"admin.conf", "kubernetes-admin", []string{"system:masters"}, true},
		{"controller-manager.conf", "system:kube-controller-manager", nil, false},
		{"scheduler.conf", "system:kube-scheduler", nil, false},
	} {
		cert, key, err := ca.issue(leafSpec{
			commonName: kc.user,
			orgs:       kc.orgs,
			usages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		})
		if err != nil {
			return err
		}
		b, err := kubeconfig(c.url, ca.certPEM, kc.user, cert, key)
		if err != nil {
			return fmt.Errorf("controlplane: %s: %w", kc.file, err)
		}
		if err := writePrivate(c.path(kc.file), b); err != nil {
			return err
		}
		if kc.admin {
			keyPEM, err := encodeKey(key)
			if err != nil {
				return err
			}
			c.adminCertPEM, c.adminKeyPEM = encodeCert(cert), keyPEM
		}
	}
	return nil
}
