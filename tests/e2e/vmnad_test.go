package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/internal/syncbuf"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/lf-edge/evelet/cni/annotation"
	"github.com/lf-edge/evelet/images/vmguest"
	"github.com/lf-edge/evelet/internal/layout"
	"github.com/lf-edge/evelet/policy"
	"github.com/lf-edge/evelet/tests/evesim"
)

// TestVMPodOnEVENetworkInstance (issues 8 and 9): on a simulated EVE device
// with a Local NI the owner gives to Kubernetes, a VM pod (TCG) with an
// eve-ni NAD gets, through evelet-cni, eth0 on the pod network and net1 on
// the NI in the owner's reserved range; the guest has both addresses on two
// NICs, and HTTP from the device to the guest's NI address answers from the
// guest. kubectl attach streams the guest's serial console (a line the
// guest writes to /dev/console), kubectl logs has it too. Deleting the pod
// frees the NI address and leaves no QEMU, netns or port on the NI bridge.
func TestVMPodOnEVENetworkInstance(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 25*time.Minute)
	cs := env.cp.Client()
	dc, err := dynamic.NewForConfig(env.cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	dev := newNADEVEDevice(t, ctx, dc, "Edge VM NAD", "edge-vm-nad", "h8")
	importVMImages(t, dev.ctrd)
	d, node := dev.d, dev.node
	ni, err := dev.nw.AddLocalNI(evesim.LocalNIOptions{Name: "vm-local", UUID: "6b2a7c1e-5d3f-4c2a-8e1b-000000000081",
		BridgeNum: 81, Subnet: "10.98.81.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	createNAD(t, ctx, dc, "eve-vm-local", `{"cniVersion":"1.1.0","name":"eve-vm-local","type":"eve-ni","networkInstance":"vm-local"}`)
	// VM pods' CNI follows --cni-conf-dir/--cni-bin-dir: evelet-cni. KVM
	// off, as in TestVMPods.
	dev.join(t, "11111111-2222-4333-8444-888888888881",
		map[string]string{policy.KeyNetworkInstances: "vm-local=10.98.81.200-10.98.81.210", policy.KeyAllowVMEmulation: "true"},
		"--vm-kvm-device=/nonexistent/kvm")
	waitNILabels(t, ctx, cs, node, "vm-local")
	applyRuntimeClass(t, ctx)

	const name = "vm-nad"
	p := vmPod(name, vmguest.DiskRef, func(p *corev1.Pod) {
		p.Annotations = map[string]string{annotation.NetworksKey: "eve-vm-local"}
		p.Spec.NodeSelector = map[string]string{corev1.LabelHostname: node}
	})
	created := time.Now()
	if _, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, context.Background(), cs, name) })
	var pod *corev1.Pod
	waitFor(t, 5*time.Minute, name+" Running", func() (bool, error) {
		p, err := cs.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pod = p
		return p.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s %v", p.Status.Phase, p.Status.ContainerStatuses)
	})
	waitFor(t, 5*time.Minute, "ready line in kubectl logs", func() (bool, error) {
		out, err := env.cp.Kubectl(ctx, "logs", "-n", "default", name)
		return strings.Contains(out, vmguest.ReadyLine), fmt.Errorf("%v: %s", err, tail(out, 5))
	})
	t.Logf("VM pod with a NAD: create -> guest ready line %v", time.Since(created).Round(time.Millisecond))

	// network-status: eth0 the pod IP, net1 in the owner's range.
	var status []annotation.NetworkStatus
	if err := json.Unmarshal([]byte(pod.Annotations[annotation.StatusKey]), &status); err != nil {
		t.Fatalf("network-status %q: %v", pod.Annotations[annotation.StatusKey], err)
	}
	t.Logf("network-status: %+v", status)
	if len(status) != 2 || status[0].Interface != "eth0" || len(status[0].IPs) != 1 || status[0].IPs[0] != pod.Status.PodIP ||
		status[1].Name != "default/eve-vm-local" || status[1].Interface != "net1" || len(status[1].IPs) != 1 {
		t.Fatalf("network-status wrong: %+v (pod IP %s)", status, pod.Status.PodIP)
	}
	podIP, niIP := pod.Status.PodIP, status[1].IPs[0]
	if ip := net.ParseIP(niIP).To4(); ip == nil || !strings.HasPrefix(niIP, "10.98.81.") || ip[3] < 200 || ip[3] > 210 {
		t.Fatalf("net1 address %q, want one in the owner's range 10.98.81.200-210", niIP)
	}
	alloc := filepath.Join(d.stateDir(), "cni", "eve-ni", ni.Status.UUID.String(), "allocations.json")
	if ips, err := allocatedIPs(alloc); err != nil || ips[niIP] == nil {
		t.Errorf("eve-ni allocations %v (%v), want %s held", ips, err, niIP)
	}

	// The guest itself has two NICs with those addresses and MACs.
	addrs, err := env.cp.Kubectl(ctx, "exec", "-n", "default", name, "--", "/bin/ip", "-o", "addr")
	if err != nil {
		t.Fatalf("kubectl exec ip addr in the guest: %v: %s", err, addrs)
	}
	links, err := env.cp.Kubectl(ctx, "exec", "-n", "default", name, "--", "/bin/ip", "-o", "link")
	if err != nil {
		t.Fatalf("kubectl exec ip link in the guest: %v: %s", err, links)
	}
	t.Logf("guest's interfaces:\n%s%s", addrs, links)
	nics := 0
	for _, l := range strings.Split(links, "\n") {
		if strings.Contains(l, "link/ether") {
			nics++
		}
	}
	if nics != 2 {
		t.Errorf("guest has %d Ethernet NICs, want 2", nics)
	}
	for _, want := range []string{"inet " + podIP + "/", "inet " + niIP + "/24"} {
		if !strings.Contains(addrs, want) {
			t.Errorf("guest lacks %q", want)
		}
	}
	for _, s := range status {
		if s.MAC != "" && !strings.Contains(links, "link/ether "+s.MAC) {
			t.Errorf("guest has no NIC with %s's MAC %s", s.Interface, s.MAC)
		}
	}

	// HTTP from the device (the NI bridge is in its namespace) to the
	// guest's NI address: the guest answers.
	waitFor(t, time.Minute, "HTTP to the guest's NI address", func() (bool, error) {
		hc := http.Client{Timeout: 3 * time.Second}
		resp, err := hc.Get("http://" + niIP + "/")
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body := string(b)
		return strings.HasPrefix(body, "evelet-guest ") && strings.Contains(body, niIP), fmt.Errorf("body %q", body)
	})

	// kubectl attach is the serial console: a line the guest writes to
	// /dev/console shows in the attach stream (and in kubectl logs). The
	// line is written until it appears, as the stream's start is not
	// observable otherwise.
	attachCtx, stopAttach := context.WithCancel(ctx)
	defer stopAttach()
	var attached syncbuf.Buffer
	attach := exec.CommandContext(attachCtx, filepath.Join(env.cp.BinDir(), "kubectl"), "--kubeconfig="+env.cp.AdminKubeconfig(),
		"attach", "-n", "default", name, "-c", "guest")
	attach.Stdout, attach.Stderr = &attached, &attached
	if err := attach.Start(); err != nil {
		t.Fatal(err)
	}
	attachDone := make(chan error, 1)
	go func() { attachDone <- attach.Wait() }()
	var marker string
	n := 0
	waitFor(t, 2*time.Minute, "the guest's console line in kubectl attach", func() (bool, error) {
		select {
		case err := <-attachDone:
			attachDone <- err
			return false, fmt.Errorf("kubectl attach ended: %v: %s", err, attached.String())
		default:
		}
		if out := attached.String(); strings.Contains(out, "h8-console-marker-") {
			for _, l := range strings.Split(out, "\n") {
				if i := strings.Index(l, "h8-console-marker-"); i >= 0 {
					marker = strings.TrimSpace(l[i:])
					return true, nil
				}
			}
		}
		n++
		out, err := env.cp.Kubectl(ctx, "exec", "-n", "default", name, "--", "/bin/sh", "-c", fmt.Sprintf("echo h8-console-marker-%d > /dev/console", n))
		return false, fmt.Errorf("not yet in the attach stream (exec: %v %s): %q", err, out, tail(attached.String(), 3))
	})
	t.Logf("kubectl attach shows %q", marker)
	stopAttach()
	<-attachDone
	waitFor(t, time.Minute, "the console line in kubectl logs", func() (bool, error) {
		out, err := env.cp.Kubectl(ctx, "logs", "-n", "default", name)
		return strings.Contains(out, marker), fmt.Errorf("%v: %s", err, tail(out, 5))
	})

	// Deleting the pod frees the NI address and leaves no QEMU, netns, tap
	// or port on the NI bridge.
	vmDir := filepath.Join(d.stateDir(), "vm", strings.TrimPrefix(pod.Status.ContainerStatuses[0].ContainerID, "evelet://"))
	if q := qemuOf(vmDir); len(q) != 1 {
		t.Errorf("QEMU processes for %s: %v", vmDir, q)
	}
	if ports := bridgePorts(t, ni.Status.BridgeName); len(ports) != 1 {
		t.Errorf("NI bridge %s ports %v, want the VM pod's net1 veth", ni.Status.BridgeName, ports)
	}
	deletePod(t, ctx, cs, name)
	st := layout.State{Dir: d.stateDir()}
	waitFor(t, 2*time.Minute, "nothing left of "+name, func() (bool, error) {
		var left []string
		if q := qemuOf(vmDir); len(q) != 0 {
			left = append(left, fmt.Sprintf("qemu %v", q))
		}
		if _, err := os.Stat(vmDir); err == nil {
			left = append(left, vmDir)
		}
		ns, _ := readDirNames(filepath.Join(d.runDir(), "netns"))
		left = append(left, ns...)
		left = append(left, bridgePorts(t, ni.Status.BridgeName)...)
		left = append(left, bridgePorts(t, nadBridges[0])...)
		r, _ := filepath.Glob(filepath.Join(st.CNI().MetaState(), "attachments", "*.json"))
		left = append(left, r...)
		ips, err := allocatedIPs(alloc)
		if err != nil {
			return false, err
		}
		for ip := range ips {
			left = append(left, "eve-ni holds "+ip)
		}
		return len(left) == 0, fmt.Errorf("left: %v", left)
	})
	if out, _ := exec.Command("ip", "-o", "link").CombinedOutput(); strings.Contains(string(out), "vmtap") {
		t.Errorf("a VM tap is left on the host:\n%s", out)
	}
}
