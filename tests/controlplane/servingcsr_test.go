package controlplane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"testing"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func servingCSR(t *testing.T, user, cn string, dns []string, ips []string, mut func(*certv1.CertificateSigningRequest)) *certv1.CertificateSigningRequest {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn, Organization: []string{"system:nodes"}}, DNSNames: dns}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	c := &certv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: "csr-x"},
		Spec: certv1.CertificateSigningRequestSpec{
			Request:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
			SignerName: certv1.KubeletServingSignerName,
			Username:   user,
			Groups:     []string{"system:nodes", "system:authenticated"},
			Usages:     []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageServerAuth},
		},
	}
	if mut != nil {
		mut(c)
	}
	return c
}

func TestDecideServingCSR(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "edge-1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: "10.0.0.5"}, {Type: corev1.NodeHostName, Address: "edge-1"},
	}}}
	const me = "system:node:edge-1"
	cases := []struct {
		name string
		csr  *certv1.CertificateSigningRequest
		node *corev1.Node
		want servingDecision
	}{
		{"own names", servingCSR(t, me, me, []string{"edge-1"}, []string{"10.0.0.5"}, nil), node, servingApprove},
		{"node not registered yet", servingCSR(t, me, me, []string{"edge-1"}, []string{"10.0.0.5"}, nil), nil, servingWait},
		{"an IP the node does not have", servingCSR(t, me, me, nil, []string{"10.0.0.6"}, nil), node, servingWait},
		{"a DNS name the node does not have", servingCSR(t, me, me, []string{"kubernetes.default"}, nil, nil), node, servingWait},
		{"another node's name", servingCSR(t, me, "system:node:edge-2", []string{"edge-1"}, nil, nil), node, servingDeny},
		{"a user, not a node", servingCSR(t, "alice", "alice", []string{"edge-1"}, nil, nil), node, servingDeny},
		{"client auth usage", servingCSR(t, me, me, []string{"edge-1"}, nil, func(c *certv1.CertificateSigningRequest) {
			c.Spec.Usages = append(c.Spec.Usages, certv1.UsageClientAuth)
		}), node, servingDeny},
		{"no names", servingCSR(t, me, me, nil, nil, nil), node, servingDeny},
		{"client signer", servingCSR(t, me, me, []string{"edge-1"}, nil, func(c *certv1.CertificateSigningRequest) {
			c.Spec.SignerName = certv1.KubeAPIServerClientKubeletSignerName
		}), node, servingIgnore},
		{"already approved", servingCSR(t, me, me, []string{"edge-1"}, nil, func(c *certv1.CertificateSigningRequest) {
			c.Status.Conditions = []certv1.CertificateSigningRequestCondition{{Type: certv1.CertificateApproved}}
		}), node, servingIgnore},
	}
	for _, c := range cases {
		if got, why := decideServingCSR(c.csr, c.node); got != c.want {
			t.Errorf("%s: decision %d (%s), want %d", c.name, got, why, c.want)
		}
	}
}
