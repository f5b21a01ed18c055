package doctor

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// nftKernelOptions are the kernel options kube-proxy's nftables mode
// needs (built in or as modules): the nf_tables core, conntrack matches
// (ct state, ct original), DNAT and masquerade, reject for Services
// without endpoints, and numgen, which picks a Service's endpoint
// (`numgen random mod N vmap`). NFT_FIB is not listed: only NodePorts on
// every local address need it, and evelet sets nodePortAddresses: [primary]
// (docs/services.md).
var nftKernelOptions = []string{"NF_TABLES", "NFT_CT", "NFT_NAT", "NFT_MASQ", "NFT_REJECT", "NFT_NUMGEN"}

// nftMinKernel is kube-proxy's own floor for nftables mode.
var nftMinKernel = [2]int{5, 13}

// NftKernel says whether the running kernel can serve kube-proxy's
// nftables mode: its release (5.13 or later) and, from the kernel's
// config (/proc/config.gz, else /boot/config-<release>), the options
// nftKernelOptions.
func NftKernel(cfg Config) Result {
	cfg.defaults()
	r := Result{Check: "nft-kernel"}
	if !cfg.KubeProxy {
		return ok(r, "kube-proxy is off")
	}
	rel := cfg.KernelRelease
	if rel == "" {
		var u unix.Utsname
		if err := unix.Uname(&u); err != nil {
			return warn(r, "kernel release unknown: "+err.Error(), "check `uname -r` is 5.13 or later")
		}
		rel = unix.ByteSliceToString(u.Release[:])
	}
	if v, ok := kernelVersion(rel); !ok || v[0] < nftMinKernel[0] || (v[0] == nftMinKernel[0] && v[1] < nftMinKernel[1]) {
		return fail(r, fmt.Sprintf("kernel %s: kube-proxy's nftables mode needs %d.%d or later", rel, nftMinKernel[0], nftMinKernel[1]),
			"boot an EVE kernel of 5.13 or later, or turn kube-proxy off (evelet.kube-proxy=false, no --kube-proxy)")
	}
	paths := cfg.KernelConfig
	if len(paths) == 0 {
		paths = []string{"/proc/config.gz", "/boot/config-" + rel}
	}
	var opts map[string]string
	var from string
	for _, p := range paths {
		if m, err := readKernelConfig(p); err == nil {
			opts, from = m, p
			break
		}
	}
	if opts == nil {
		return warn(r, fmt.Sprintf("kernel %s; its configuration is not readable (%s): cannot tell whether it has %s", rel, strings.Join(paths, ", "), strings.Join(nftKernelOptions, ", ")),
			"check the EVE kernel's config for CONFIG_"+strings.Join(nftKernelOptions, ", CONFIG_")+" (y or m)")
	}
	var missing, modules []string
	for _, o := range nftKernelOptions {
		switch opts["CONFIG_"+o] {
		case "y":
		case "m":
			modules = append(modules, o)
		default:
			missing = append(missing, "CONFIG_"+o)
		}
	}
	if len(missing) > 0 {
		return fail(r, fmt.Sprintf("kernel %s lacks %s (%s): kube-proxy's nftables rules do not load, the node has no Services", rel, strings.Join(missing, ", "), from),
			"build EVE's kernel with "+strings.Join(missing, ", ")+" (=m is enough), or turn kube-proxy off (evelet.kube-proxy=false, no --kube-proxy)")
	}
	found := fmt.Sprintf("kernel %s has %s (%s)", rel, strings.Join(nftKernelOptions, ", "), from)
	if len(modules) > 0 {
		found += "; as modules: " + strings.Join(modules, ", ")
	}
	return ok(r, found)
}

// kernelVersion parses "major.minor" at the start of a release string.
func kernelVersion(rel string) ([2]int, bool) {
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return [2]int{}, false
	}
	maj, err1 := strconv.Atoi(parts[0])
	minor := parts[1]
	if i := strings.IndexFunc(minor, func(c rune) bool { return c < '0' || c > '9' }); i >= 0 {
		minor = minor[:i]
	}
	mi, err2 := strconv.Atoi(minor)
	return [2]int{maj, mi}, err1 == nil && err2 == nil
}

// readKernelConfig reads a kernel config (gzip-compressed when its name
// ends in .gz) into CONFIG_X -> value.
func readKernelConfig(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rd io.Reader = f
	if strings.HasSuffix(path, ".gz") {
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, err
		}
		defer zr.Close()
		rd = zr
	}
	m := map[string]string{}
	sc := bufio.NewScanner(rd)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok && strings.HasPrefix(k, "CONFIG_") {
			m[k] = v
		}
	}
	return m, sc.Err()
}
