package controlplane

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Kubelets here run with serverTLSBootstrap: their serving certificates
// come from the cluster CA through kubernetes.io/kubelet-serving CSRs, and
// the apiserver verifies them (--kubelet-certificate-authority). Nothing in
// Kubernetes approves those CSRs (kube-controller-manager only approves
// client certificates), so the harness does, the way a careful cluster
// admin would: only a node asking for its own name, only serving usages,
// and only names and addresses the Node object has.

const (
	nodeUserPrefix = "system:node:"
	approvedReason = "EveletHarnessServingCSR"
)

// servingDecision is what the approver does with one CSR.
type servingDecision int

const (
	servingWait servingDecision = iota // not (yet) provable: leave pending
	servingApprove
	servingDeny
	servingIgnore // not a kubelet-serving CSR, or already decided
)

// decideServingCSR checks csr against node (nil: no such Node yet). The
// reason says why, for the CSR's condition and the logs.
func decideServingCSR(csr *certv1.CertificateSigningRequest, node *corev1.Node) (servingDecision, string) {
	if csr.Spec.SignerName != certv1.KubeletServingSignerName {
		return servingIgnore, "not a kubelet-serving CSR"
	}
	for _, c := range csr.Status.Conditions {
		if c.Type == certv1.CertificateApproved || c.Type == certv1.CertificateDenied || c.Type == certv1.CertificateFailed {
			return servingIgnore, "already decided"
		}
	}
	name, ok := strings.CutPrefix(csr.Spec.Username, nodeUserPrefix)
	if !ok || name == "" || !slices.Contains(csr.Spec.Groups, "system:nodes") {
		return servingDeny, fmt.Sprintf("requested by %q, not by a node", csr.Spec.Username)
	}
	block, _ := pem.Decode(csr.Spec.Request)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return servingDeny, "request is not a PEM certificate request"
	}
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return servingDeny, "request does not parse: " + err.Error()
	}
	if err := req.CheckSignature(); err != nil {
		return servingDeny, "request signature: " + err.Error()
	}
	if req.Subject.CommonName != csr.Spec.Username || !slices.Equal(req.Subject.Organization, []string{"system:nodes"}) {
		return servingDeny, fmt.Sprintf("subject %q does not match requester %q in organization system:nodes", req.Subject.String(), csr.Spec.Username)
	}
	if len(req.EmailAddresses) > 0 || len(req.URIs) > 0 {
		return servingDeny, "asks for e-mail or URI names"
	}
	if len(req.DNSNames)+len(req.IPAddresses) == 0 {
		return servingDeny, "asks for no DNS name or IP address"
	}
	serverAuth := false
	for _, u := range csr.Spec.Usages {
		switch u {
		case certv1.UsageServerAuth:
			serverAuth = true
		case certv1.UsageDigitalSignature, certv1.UsageKeyEncipherment:
		default:
			return servingDeny, fmt.Sprintf("asks for usage %q", u)
		}
	}
	if !serverAuth {
		return servingDeny, "does not ask for server auth"
	}
	if node == nil {
		return servingWait, "node " + name + " is not registered yet"
	}
	if node.Name != name {
		return servingWait, "node object is " + node.Name
	}
	var dns, ips []string
	for _, a := range node.Status.Addresses {
		switch a.Type {
		case corev1.NodeHostName, corev1.NodeInternalDNS, corev1.NodeExternalDNS:
			dns = append(dns, a.Address)
		case corev1.NodeInternalIP, corev1.NodeExternalIP:
			if ip := net.ParseIP(a.Address); ip != nil {
				ips = append(ips, ip.String())
			}
		}
	}
	for _, d := range req.DNSNames {
		if !slices.Contains(dns, d) {
			return servingWait, fmt.Sprintf("DNS name %q is not an address of node %s (%v)", d, name, dns)
		}
	}
	for _, ip := range req.IPAddresses {
		if !slices.Contains(ips, ip.String()) {
			return servingWait, fmt.Sprintf("IP %s is not an address of node %s (%v)", ip, name, ips)
		}
	}
	return servingApprove, fmt.Sprintf("names %v and IPs %v are node %s's addresses", req.DNSNames, req.IPAddresses, name)
}

// servingApprover watches CSRs and Nodes and decides kubelet-serving CSRs.
type servingApprover struct {
	client kubernetes.Interface
	logf   func(format string, args ...any)
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	approved int
	waiting  map[string]string // CSR name -> why it waits
}

func startServingApprover(client kubernetes.Interface, logf func(string, ...any)) *servingApprover {
	ctx, cancel := context.WithCancel(context.Background())
	a := &servingApprover{client: client, logf: logf, cancel: cancel, done: make(chan struct{}), waiting: map[string]string{}}
	f := informers.NewSharedInformerFactory(client, 0)
	csrs := f.Certificates().V1().CertificateSigningRequests()
	nodes := f.Core().V1().Nodes()
	kick := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	h := cache.ResourceEventHandlerFuncs{AddFunc: poke, UpdateFunc: func(_, n any) { poke(n) }}
	csrs.Informer().AddEventHandler(h)
	nodes.Informer().AddEventHandler(h)
	f.Start(ctx.Done())
	go func() {
		defer close(a.done)
		defer f.Shutdown()
		// Events drive it; the tick retries what a failed update (the
		// apiserver restarting, say) left pending.
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-kick:
			case <-tick.C:
			}
			if !cache.WaitForCacheSync(ctx.Done(), csrs.Informer().HasSynced, nodes.Informer().HasSynced) {
				return
			}
			all, _ := csrs.Lister().List(labels.Everything())
			for _, csr := range all {
				var node *corev1.Node
				if name, ok := strings.CutPrefix(csr.Spec.Username, nodeUserPrefix); ok {
					node, _ = nodes.Lister().Get(name)
				}
				a.decide(ctx, csr, node)
			}
		}
	}()
	return a
}

func (a *servingApprover) decide(ctx context.Context, csr *certv1.CertificateSigningRequest, node *corev1.Node) {
	d, why := decideServingCSR(csr, node)
	a.mu.Lock()
	prev, seen := a.waiting[csr.Name]
	if d == servingWait {
		a.waiting[csr.Name] = why
	} else {
		delete(a.waiting, csr.Name)
	}
	a.mu.Unlock()
	if d == servingWait && (!seen || prev != why) {
		a.logf("serving CSR %s pending: %s", csr.Name, why)
	}
	if d != servingApprove && d != servingDeny {
		return
	}
	c := csr.DeepCopy()
	cond := certv1.CertificateSigningRequestCondition{
		Type: certv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: approvedReason, Message: why,
		LastUpdateTime: metav1.Now(),
	}
	if d == servingDeny {
		cond.Type, cond.Reason = certv1.CertificateDenied, "EveletHarnessRefused"
	}
	c.Status.Conditions = append(c.Status.Conditions, cond)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := a.client.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, c.Name, c, metav1.UpdateOptions{})
	switch {
	case err == nil && d == servingApprove:
		a.mu.Lock()
		a.approved++
		a.mu.Unlock()
		a.logf("serving CSR %s approved: %s", c.Name, why)
	case err == nil:
		a.logf("serving CSR %s denied: %s", c.Name, why)
	case !apierrors.IsConflict(err) && !apierrors.IsNotFound(err):
		a.logf("serving CSR %s: %v", c.Name, err)
	}
}

func (a *servingApprover) stop() {
	a.cancel()
	<-a.done
}

// ServingCSRsApproved counts the kubelet-serving CSRs this control plane
// approved.
func (c *ControlPlane) ServingCSRsApproved() int {
	c.mu.Lock()
	a := c.approver
	c.mu.Unlock()
	if a == nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.approved
}
