package nodedns

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"strings"

	"github.com/lf-edge/evelet/eve/pubsub"
)

// Upstreams are the resolvers names outside the cluster go to: the DNS
// servers of the device's ports from nim's DeviceNetworkStatus (management
// ports first, then the others, each once), or, when EVE publishes none,
// the nameservers of resolvConf (the EVE host's /etc/resolv.conf, which
// nim writes from the same data). self (the node-local address) is never
// an upstream: that would be a forwarding loop.
func Upstreams(root pubsub.Root, resolvConf, self string) []string {
	var out []string
	seen := map[string]bool{self: true}
	add := func(ip net.IP) {
		if ip == nil || ip.IsUnspecified() {
			return
		}
		if s := ip.String(); !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	if root.Run != "" {
		st, ok, err := pubsub.Read[pubsub.DeviceNetworkStatus](root.DeviceNetworkStatus())
		if ok && err == nil {
			for _, mgmt := range []bool{true, false} {
				for _, p := range st.Ports {
					if p.IsMgmt != mgmt {
						continue
					}
					for _, ip := range p.DNSServers {
						add(ip)
					}
				}
			}
		}
	}
	if len(out) > 0 || resolvConf == "" {
		return out
	}
	b, err := os.ReadFile(resolvConf)
	if err != nil {
		return out
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// A zoned (link-local IPv6) nameserver cannot be forwarded to.
		if len(f) >= 2 && f[0] == "nameserver" && !strings.Contains(f[1], "%") {
			add(net.ParseIP(f[1]))
		}
	}
	return out
}
