package e2e

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lf-edge/evelet/tests/devnet"
)

// TestAddressChange (issue 18 item 4): the device's address changes while
// a pod runs, as a DHCP renewal or an LTE reattach does it. The node is
// Ready again on the new address, the apiserver reaches the kubelet there
// for `kubectl logs` and `exec` (it verifies the kubelet's serving
// certificate, which must name the new address), the pod is not restarted,
// and nothing joins again: the client certificate is the one from before
// and no client CSR is made. Before, the kubelet kept listening on an
// address the device no longer had until something restarted it.
func TestAddressChange(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 15*time.Minute)
	cs := env.cp.Client()
	d := env.devnet.NewDevice(t, 9, devnet.DeviceOptions{ControlPlane: env.cp, Evelet: env.evelet, Images: env.images})
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	n, err := d.WaitReady(ctx, 4*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	oldIP := devnet.InternalIP(n)
	app := "addr-" + strconv.FormatInt(time.Now().UnixNano()%1_000_000, 36)
	t.Cleanup(func() { cs.AppsV1().Deployments("default").Delete(ctx, app, metav1.DeleteOptions{}) })
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, busyboxDeployment(app, d.NodeName(), "echo addr-up; exec sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := runningPod(t, app, 3*time.Minute)
	ctrID := containerID(pod)
	clientCert := filepath.Join(d.StateDir(), "credentials", "pki", "kubelet-client-current.pem")
	clientBefore, err := os.ReadFile(clientCert)
	if err != nil {
		t.Fatal(err)
	}
	csrsBefore := nodeCSRs(t, d.NodeName())

	moved := time.Now()
	newIP, err := d.MoveAddress(109)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("device address %s -> %s", oldIP, newIP)
	waitFor(t, 3*time.Minute, "Node Ready with InternalIP "+newIP, func() (bool, error) {
		n, err := cs.CoreV1().Nodes().Get(ctx, d.NodeName(), metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return devnet.InternalIP(n) == newIP && isReady(n), fmt.Errorf("InternalIP %s, conditions %v", devnet.InternalIP(n), n.Status.Conditions)
	})
	t.Logf("node Ready on %s %v after the change", newIP, time.Since(moved).Round(time.Millisecond))
	if err := d.WaitLeaseRenewedAfter(ctx, moved, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	serving := filepath.Join(d.StateDir(), "credentials", "pki", "kubelet-server-current.pem")
	waitFor(t, 3*time.Minute, "a serving certificate naming "+newIP, func() (bool, error) {
		ips, err := certIPs(serving)
		return slices.Contains(ips, newIP) && !slices.Contains(ips, oldIP), fmt.Errorf("serving certificate IPs %v (%v)", ips, err)
	})
	waitFor(t, 2*time.Minute, "kubectl logs through the new address", func() (bool, error) {
		out, err := env.cp.Kubectl(ctx, "logs", "-n", "default", pod.Name)
		return strings.Contains(out, "addr-up"), fmt.Errorf("%v: %s", err, out)
	})
	out, err := env.cp.Kubectl(ctx, "exec", "-n", "default", pod.Name, "--", "sh", "-c", "echo exec-$((40+2))")
	if err != nil || !strings.Contains(out, "exec-42") {
		t.Errorf("kubectl exec after the change: %v: %q", err, out)
	}

	p, err := cs.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := containerID(p); got != ctrID {
		t.Errorf("container %s -> %s: the pod was restarted", ctrID, got)
	}
	for _, c := range p.Status.ContainerStatuses {
		if c.RestartCount != 0 {
			t.Errorf("container %s restarted %d times", c.Name, c.RestartCount)
		}
	}
	clientAfter, err := os.ReadFile(clientCert)
	if err != nil || string(clientAfter) != string(clientBefore) {
		t.Errorf("the kubelet's client certificate changed (%v): a new join", err)
	}
	for _, name := range nodeCSRs(t, d.NodeName()) {
		if slices.Contains(csrsBefore, name) {
			continue
		}
		c, err := cs.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if c.Spec.SignerName != "kubernetes.io/kubelet-serving" {
			t.Errorf("new CSR %s for signer %s after the change: only a serving certificate was due", name, c.Spec.SignerName)
		}
	}
	st, err := d.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Credentials != "reused" {
		t.Errorf("agent status credentials %q after the change, want reused", st.Credentials)
	}
}

// certIPs reads the IP addresses a PEM certificate names.
func certIPs(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var blk *pem.Block
	for {
		if blk, b = pem.Decode(b); blk == nil || blk.Type == "CERTIFICATE" {
			break
		}
	}
	if blk == nil {
		return nil, fmt.Errorf("%s: no certificate", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, err
	}
	var ips []string
	for _, ip := range c.IPAddresses {
		ips = append(ips, ip.String())
	}
	return ips, nil
}
