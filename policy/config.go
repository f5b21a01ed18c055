package policy

import (
	"fmt"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
)

// Config item keys (EdgeDevConfig configItems) that change the policy.
const (
	KeyPrefix                 = configItemsPrefix + "policy."
	KeyAllowPrivileged        = KeyPrefix + "allow-privileged"
	KeyAllowHostPID           = KeyPrefix + "allow-host-pid"
	KeyAllowHostIPC           = KeyPrefix + "allow-host-ipc"
	KeyAllowHostNetwork       = KeyPrefix + "allow-host-network"
	KeyAllowUnmaskedProc      = KeyPrefix + "allow-unmasked-proc"
	KeyAllowUnconfinedSeccomp = KeyPrefix + "allow-unconfined-seccomp"
	KeyAllowedHostPorts       = KeyPrefix + "allowed-host-ports"
	KeyAllowedHostPaths       = KeyPrefix + "allowed-host-paths"
	KeyAllowedCapabilities    = KeyPrefix + "allowed-capabilities"
	KeyAllowedDevices         = KeyPrefix + "allowed-devices"
	KeyAllowedUnsafeSysctls   = KeyPrefix + "allowed-unsafe-sysctls"
	KeyAllowVMEmulation       = KeyPrefix + "allow-vm-emulation"
	KeyVMOverlayMaxSize       = KeyPrefix + "vm-overlay-max-size"
)

func isListKey(k string) bool {
	switch k {
	case KeyAllowedHostPaths, KeyAllowedVolumePlugins, KeyAllowedCapabilities, KeyAllowedDevices, KeyAllowedUnsafeSysctls, KeyAllowedHostPorts, KeyNetworkInstances,
		KeyCNIPlugins, KeyCNIIPAM, KeyCNISharedNamespaces, KeyDevices:
		return true
	}
	return false
}

// FromConfigItems builds a policy from the device's config items: Default,
// changed by every evelet.policy.* key. Keys outside evelet.policy. are
// ignored (other parts of evelet, or EVE, own them). An unknown
// evelet.policy.* key, or a value that does not parse, gives an error naming
// the key and leaves that key's setting at its default (for a list: the
// whole list, never a part of it); the other keys still apply. An empty
// value means the default.
//
// KubeletRootDir, PodLogsDir, ProtectedDirs and RuntimeDirs are not config items: the
// caller sets them.
func FromConfigItems(items map[string]string) (Policy, []error) {
	p := Default()
	var errs []error
	keys := make([]string, 0, len(items))
	for k := range items {
		if strings.HasPrefix(k, KeyPrefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys) // errors in a stable order
	for _, k := range keys {
		v := strings.TrimSpace(items[k])
		if err := apply(&p, k, v); err != nil {
			errs = append(errs, fmt.Errorf("config item %s=%q: %w", k, items[k], err))
		}
	}
	return p, errs
}

func apply(p *Policy, key, v string) error {
	switch key {
	case KeyAllowPrivileged:
		return parseBool(v, &p.AllowPrivileged)
	case KeyAllowHostPID:
		return parseBool(v, &p.AllowHostPID)
	case KeyAllowHostIPC:
		return parseBool(v, &p.AllowHostIPC)
	case KeyAllowHostNetwork:
		return parseBool(v, &p.AllowHostNetwork)
	case KeyAllowUnmaskedProc:
		return parseBool(v, &p.AllowUnmaskedProc)
	case KeyAllowUnconfinedSeccomp:
		return parseBool(v, &p.AllowUnconfinedSeccomp)
	case KeyAllowVMEmulation:
		return parseBool(v, &p.AllowVMEmulation)
	case KeyVMOverlayMaxSize:
		return parseVMOverlayMaxSize(v, &p.VMOverlayMaxSize)
	case KeyAllowedHostPorts:
		return parseList(v, &p.AllowedHostPorts, parsePortRange)
	case KeyAllowedHostPaths:
		return parseList(v, &p.AllowedHostPaths, parseHostPath)
	case KeyAllowedVolumePlugins:
		return parseList(v, &p.AllowedVolumePlugins, parseVolumePlugin)
	case KeyAllowedCapabilities:
		return parseList(v, &p.AllowedCapabilities, parseCapability)
	case KeyAllowedDevices:
		return parseList(v, &p.AllowedDevices, parseDevice)
	case KeyAllowedUnsafeSysctls:
		return parseList(v, &p.AllowedUnsafeSysctls, parseSysctlPattern)
	case KeyNetworkInstances:
		return parseList(v, &p.AllowedNetworkInstances, parseNetworkInstance)
	case KeyDevices:
		return parseList(v, &p.AssignedDevices, parseAdapterLabel)
	}
	if ok, err := applyPodSpecKey(&p.PodSpecRules, key, v); ok {
		return err
	}
	if ok, err := applyNetworkKey(&p.NetworkRules, key, v); ok {
		return err
	}
	return fmt.Errorf("unknown evelet policy key")
}

func parseBool(v string, dst *bool) error {
	if v == "" {
		*dst = false
		return nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return fmt.Errorf("want true or false")
	}
	*dst = b
	return nil
}

// parseList splits a comma list, checks and normalizes every entry, and sets
// dst only if all of them are good.
func parseList(v string, dst *[]string, entry func(string) (string, error)) error {
	var out []string
	for _, e := range strings.Split(v, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		n, err := entry(e)
		if err != nil {
			return fmt.Errorf("entry %q: %w", e, err)
		}
		out = append(out, n)
	}
	*dst = out
	return nil
}

func parseHostPath(e string) (string, error) {
	if !strings.HasPrefix(e, "/") {
		return "", fmt.Errorf("not an absolute path")
	}
	if hasDotDot(e) {
		return "", fmt.Errorf(`".." is not allowed`)
	}
	return filepath.Clean(e), nil
}

func parseCapability(e string) (string, error) {
	c := normalizeCap(e)
	if c != "ALL" && !knownCaps[c] {
		return "", fmt.Errorf("not a Linux capability")
	}
	return c, nil
}

func parseDevice(e string) (string, error) {
	if strings.HasPrefix(e, "/") {
		if hasDotDot(e) {
			return "", fmt.Errorf(`".." is not allowed`)
		}
		if _, err := path.Match(e, ""); err != nil {
			return "", fmt.Errorf("bad wildcard pattern: %v", err)
		}
		return path.Clean(e), nil
	}
	// A CDI device name: vendor.com/class=name.
	slash, eq := strings.Index(e, "/"), strings.Index(e, "=")
	if slash <= 0 || eq < slash+2 || eq == len(e)-1 {
		return "", fmt.Errorf("neither an absolute device path nor a CDI device name (vendor.com/class=name)")
	}
	return e, nil
}

func parseSysctlPattern(e string) (string, error) {
	n := normalizeSysctl(e)
	if i := strings.Index(n, "*"); i >= 0 && i != len(n)-1 {
		return "", fmt.Errorf(`"*" may only end a sysctl prefix`)
	}
	if sysctlNamespace(n) == "" {
		return "", fmt.Errorf("not a namespaced sysctl (only net.*, fs.mqueue.* and the IPC kernel.sem, kernel.shm*, kernel.msg* ones can be allowed)")
	}
	return n, nil
}

func hasDotDot(p string) bool {
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return true
		}
	}
	return false
}

// parsePortRange accepts "port" or "low-high" (1..65535, low <= high) and
// returns it in that form without blanks.
func parsePortRange(e string) (string, error) {
	lo, hi, ok := portRange(e)
	if !ok {
		return "", fmt.Errorf(`want a port or a range "low-high" of ports 1 to 65535`)
	}
	if lo == hi {
		return strconv.Itoa(lo), nil
	}
	return fmt.Sprintf("%d-%d", lo, hi), nil
}

func portRange(e string) (lo, hi int, ok bool) {
	a, b, isRange := strings.Cut(e, "-")
	lo, err1 := strconv.Atoi(strings.TrimSpace(a))
	hi, err2 := lo, error(nil)
	if isRange {
		hi, err2 = strconv.Atoi(strings.TrimSpace(b))
	}
	if err1 != nil || err2 != nil || lo < 1 || hi > 65535 || lo > hi {
		return 0, 0, false
	}
	return lo, hi, true
}

// parseVMOverlayMaxSize reads a size as a Kubernetes quantity ("10Gi",
// "500M"); empty means the default.
func parseVMOverlayMaxSize(v string, dst *int64) error {
	if v == "" {
		*dst = 0
		return nil
	}
	q, err := resource.ParseQuantity(v)
	if err != nil {
		return fmt.Errorf("want a size such as 10Gi")
	}
	n, ok := q.AsInt64()
	if !ok || n < MinVMOverlayMaxSize {
		return fmt.Errorf("want a size of at least 1Mi")
	}
	*dst = n
	return nil
}
