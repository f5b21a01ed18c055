package layout

import "path/filepath"

// DefaultRunDir is the run-time root on an EVE device (a tmpfs: empty
// after every boot).
const DefaultRunDir = "/run/evelet"

// Run is the run-time root: sockets, pids and files that must not outlive
// the boot.
type Run struct{ Dir string }

// CRISocket is evelet's CRI server, the kubelet's runtime endpoint.
func (r Run) CRISocket() string { return filepath.Join(r.Dir, "cri.sock") }

// Status is what `evelet status` reads, with the agent's heartbeat.
func (r Run) Status() string { return filepath.Join(r.Dir, "status.json") }

// KubeletPolicy is the owner's guardrail policy for the kubelet's hostPath
// guard, rewritten whenever the owner's items change.
func (r Run) KubeletPolicy() string { return filepath.Join(r.Dir, "kubelet-policy.json") }

// UpgradeBootMarker's absence at start tells the upgrade coordinator the
// device rebooted since the last run.
func (r Run) UpgradeBootMarker() string { return filepath.Join(r.Dir, "upgrade-boot") }

// EveNISettings is the eve-ni CNI plugin's settings (the owner's NIs).
func (r Run) EveNISettings() string { return filepath.Join(r.Dir, "eve-ni.json") }

// DHCPSocket is the CNI dhcp daemon's socket (cni/dhcpd).
func (r Run) DHCPSocket() string { return filepath.Join(r.Dir, "cni-dhcp.sock") }

// Netns holds the network namespaces of VM pods (cri/vm).
func (r Run) Netns() string { return filepath.Join(r.Dir, "netns") }

// VM is the VM backend's state (cri/vm): one directory per sandbox and
// container, qcow2 overlays, the supervisor's spec, log and exit records.
func (s State) VM() string { return filepath.Join(s.Dir, "vm") }

// VMNet is the VM backend's libcni cache (cri/vm/vmnet).
func (s State) VMNet() string { return filepath.Join(s.Dir, "vm-net") }

// CDI holds the CDI specs of the ResourceClaims evelet's DRA driver
// prepared (dra/claimspec), read by the CRI shim. Under the state
// directory: the kubelet does not prepare a claim again after a reboot.
func (s State) CDI() string { return filepath.Join(s.Dir, "dra", "cdi") }
