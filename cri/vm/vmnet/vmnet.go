// Package vmnet gives a VM pod the pod network: it creates the sandbox's
// network namespace, runs the node's CNI configuration in it exactly as
// containerd's CRI does for container pods, and then hands every interface
// CNI made over to the guest. Each CNI interface gets a bridge and a tap in
// the namespace; the tap is what QEMU attaches as a virtio-net NIC with the
// interface's MAC, and a DHCP responder (ServeDHCP, run by the per-VM
// supervisor) gives the guest the interface's IP. See docs/vm-networking.md.
package vmnet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/lf-edge/evelet/internal/atomicfile"
)

// Config says where the CNI configuration, plugins, namespaces and caches are.
type Config struct {
	// CNIConfDir holds the conflists; the first one in lexical order is the
	// pod network, as containerd's CRI with max_conf_num = 1 picks it.
	CNIConfDir string
	// CNIBinDirs are searched for plugin binaries.
	CNIBinDirs []string
	// NetnsDir is where sandbox namespaces are bind-mounted (<dir>/<sandboxID>).
	NetnsDir string
	// CacheDir holds libcni's result cache and this package's attachment
	// records; it must survive a reboot so Teardown can still release IPAM.
	CacheDir string
	Log      *logrus.Entry
}

// PodMeta is what CNI learns about the pod (CNI_ARGS and capabilities).
type PodMeta struct {
	Namespace, Name, UID string
	Annotations          map[string]string
	// PortMappings are the pod's hostPorts (the portMappings capability).
	// Extension of the contract: empty means none.
	PortMappings []PortMapping
}

// PortMapping is one hostPort, as the CNI portMappings capability spells it.
type PortMapping struct {
	HostPort      int32  `json:"hostPort"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol"` // tcp, udp or sctp
	HostIP        string `json:"hostIP,omitempty"`
}

// Attachment is the pod network of one VM sandbox.
type Attachment struct {
	// Netns is the path of the sandbox's network namespace; QEMU runs in it.
	Netns string
	NICs  []NIC
	// IPs are the pod IPs (the guest's), first the primary one.
	IPs []string
	// Hostname is offered to the guest by DHCP (the pod name). Extension.
	Hostname string `json:",omitempty"`
	// DNS servers from the CNI result, offered by DHCP. Extension.
	DNS []netip.Addr `json:",omitempty"`
}

// NIC is one CNI interface handed to the guest.
type NIC struct {
	// PodIfName is the interface CNI created (eth0, net1, ...).
	PodIfName string
	// Tap is the tap in the sandbox namespace QEMU opens
	// (-netdev tap,ifname=<Tap>,script=no,downscript=no).
	Tap string
	// MAC is the guest NIC's MAC: the one CNI gave PodIfName.
	MAC string
	IPs []netip.Prefix
	// Gateway is the IPv4 default gateway, invalid if CNI set none.
	Gateway netip.Addr
	MTU     int
	// Bridge joins PodIfName and Tap; the DHCP responder listens on it.
	// Extension of the contract.
	Bridge string `json:",omitempty"`
}

// Network sets up and tears down VM sandbox networks.
type Network struct {
	cfg Config
	log *logrus.Entry
	// mu serialises Setup and Teardown node-wide: simple, and VM pods
	// start seldom enough that CNI ADD (tens of ms) is not a queue.
	mu sync.Mutex
}

// New checks the configuration and returns a Network.
func New(cfg Config) (*Network, error) {
	if cfg.CNIConfDir == "" || len(cfg.CNIBinDirs) == 0 || cfg.NetnsDir == "" || cfg.CacheDir == "" {
		return nil, errors.New("vmnet: CNIConfDir, CNIBinDirs, NetnsDir and CacheDir are required")
	}
	log := cfg.Log
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	return &Network{cfg: cfg, log: log.WithField("component", "vmnet")}, nil
}

// sandboxIDRe keeps a sandbox ID usable as a file name: it becomes part of
// paths under NetnsDir and CacheDir, so no separators or dot-dot.
var sandboxIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

func checkID(id string) error {
	if !sandboxIDRe.MatchString(id) || id == "." || id == ".." {
		return fmt.Errorf("vmnet: invalid sandbox ID %q", id)
	}
	return nil
}

func (n *Network) netnsPath(id string) string { return filepath.Join(n.cfg.NetnsDir, id) }
func (n *Network) recordPath(id string) string {
	return filepath.Join(n.cfg.CacheDir, "vmnet", id+".json")
}

// Setup creates the sandbox's namespace, runs CNI ADD and turns every CNI
// interface into a bridge + tap for the guest. On error nothing is left.
func (n *Network) Setup(ctx context.Context, sandboxID string, pod PodMeta) (*Attachment, error) {
	if err := checkID(sandboxID); err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	log := n.log.WithField("sandbox", sandboxID)
	// Leftovers of a crashed earlier attempt with this ID go first.
	if err := n.teardown(ctx, sandboxID); err != nil {
		return nil, fmt.Errorf("vmnet: clean up earlier attempt: %w", err)
	}
	path := n.netnsPath(sandboxID)
	if err := createNetns(path); err != nil {
		return nil, fmt.Errorf("vmnet: %w", err)
	}
	if testHookAfterNetns != nil {
		testHookAfterNetns()
	}
	att, err := n.setup(ctx, sandboxID, path, pod)
	if err != nil {
		if terr := n.teardown(context.WithoutCancel(ctx), sandboxID); terr != nil {
			log.WithError(terr).Warn("cleanup after failed setup")
		}
		return nil, err
	}
	log.WithField("ips", att.IPs).Info("VM sandbox network ready")
	return att, nil
}

func (n *Network) setup(ctx context.Context, id, path string, pod PodMeta) (*Attachment, error) {
	if err := linkUp(path, "lo"); err != nil {
		return nil, fmt.Errorf("vmnet: loopback up: %w", err)
	}
	res, err := n.cniAdd(ctx, id, path, pod)
	if err != nil {
		return nil, err
	}
	if testHookAfterAdd != nil {
		testHookAfterAdd()
	}
	if err := addUnreported(path, res); err != nil {
		return nil, fmt.Errorf("vmnet: interfaces of the sandbox: %w", err)
	}
	att := &Attachment{Netns: path, Hostname: hostnameOf(pod.Name), DNS: res.dns}
	for i, ifc := range res.ifaces {
		nic, err := handOver(path, i, ifc)
		if err != nil {
			return nil, fmt.Errorf("vmnet: hand %s to the guest: %w", ifc.name, err)
		}
		att.NICs = append(att.NICs, nic)
		for _, p := range nic.IPs {
			att.IPs = append(att.IPs, p.Addr().String())
		}
	}
	if err := guardNICs(path, att.NICs); err != nil {
		return nil, fmt.Errorf("vmnet: %w", err)
	}
	if testHookAfterHandOver != nil {
		testHookAfterHandOver()
	}
	if len(att.NICs) == 0 {
		return nil, errors.New("vmnet: CNI put no interface in the sandbox")
	}
	b, err := json.Marshal(att)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(n.recordPath(id)), 0o700); err != nil {
		return nil, fmt.Errorf("vmnet: %w", err)
	}
	if err := atomicfile.WriteFile(n.recordPath(id), b, 0o600); err != nil {
		return nil, fmt.Errorf("vmnet: record attachment: %w", err)
	}
	return att, nil
}

// Teardown undoes Setup: CNI DEL (from libcni's cache, so it works after the
// pod or the conflist is gone), then the namespace with its taps and bridges,
// then the record. Safe to call again and after a crash at any step.
func (n *Network) Teardown(ctx context.Context, sandboxID string) error {
	if err := checkID(sandboxID); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.teardown(ctx, sandboxID)
}

func (n *Network) teardown(ctx context.Context, id string) error {
	path := n.netnsPath(id)
	if err := n.cniDel(ctx, id, path); err != nil {
		// Keep the namespace and record: a later Teardown retries the DEL.
		return err
	}
	if err := removeNetns(path); err != nil {
		return fmt.Errorf("vmnet: %w", err)
	}
	if err := os.Remove(n.recordPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("vmnet: %w", err)
	}
	return nil
}

// ErrNotFound is returned by Status for a sandbox without a network.
var ErrNotFound = errors.New("vmnet: no network for this sandbox")

// Status returns the attachment Setup recorded, for re-adoption after a
// restart of the CRI shim. It checks that the namespace is still there.
func (n *Network) Status(sandboxID string) (*Attachment, error) {
	if err := checkID(sandboxID); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(n.recordPath(sandboxID))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("vmnet: %w", err)
	}
	var att Attachment
	if err := json.Unmarshal(b, &att); err != nil {
		return nil, fmt.Errorf("vmnet: attachment record %s: %w", n.recordPath(sandboxID), err)
	}
	if !isNetns(att.Netns) {
		return nil, fmt.Errorf("vmnet: namespace %s of sandbox %s is gone: %w", att.Netns, sandboxID, ErrNotFound)
	}
	return &att, nil
}

// hostnameOf makes a DHCP host name (RFC 1123 label) of the pod name.
func hostnameOf(name string) string {
	if len(name) > 63 {
		name = name[:63]
	}
	return name
}

// Crash points for tests: the test's child process stops there and is
// killed with SIGKILL.
var testHookAfterNetns, testHookAfterAdd, testHookAfterHandOver func()
