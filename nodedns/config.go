package nodedns

import (
	"fmt"
	"net"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// DefaultAddress is NodeLocal DNSCache's link-local address: pods reach it
// on every node of a cluster that uses that convention.
const DefaultAddress = "169.254.20.10"

// Config is one node-local DNS server.
type Config struct {
	// Address is the IPv4 address the server listens on (and only there:
	// it never answers on the device's other addresses).
	Address string
	// Port is 53 unless a test says otherwise.
	Port int
	// ClusterDomain is the cluster's DNS domain ("cluster.local").
	ClusterDomain string
	// Kubeconfig is what the kubernetes plugin reads Services,
	// EndpointSlices and Namespaces with: the node's own credentials today,
	// a local caching proxy's tomorrow (the one seam to change).
	Kubeconfig string
	// Upstreams are the resolvers for every name outside the cluster
	// ("ip" or "ip:port"); none: such names fail (SERVFAIL).
	Upstreams []string
	// StaleFor is how long expired cached answers are still served when
	// their source (apiserver or upstream) does not answer.
	StaleFor time.Duration
}

func (c Config) withDefaults() Config {
	if c.Address == "" {
		c.Address = DefaultAddress
	}
	if c.Port == 0 {
		c.Port = 53
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = "cluster.local"
	}
	if c.StaleFor == 0 {
		c.StaleFor = 24 * time.Hour
	}
	return c
}

// Validate refuses what would put something unexpected into the Corefile:
// every value below comes from the join or EVE, never from the cluster.
func (c Config) Validate() error {
	c = c.withDefaults()
	if ip := net.ParseIP(c.Address); ip == nil || ip.To4() == nil {
		return fmt.Errorf("node DNS address %q is not an IPv4 address", c.Address)
	}
	if c.Port < 1 || c.Port > 65535 {
		return fmt.Errorf("node DNS port %d out of range", c.Port)
	}
	if errs := validation.IsDNS1123Subdomain(c.ClusterDomain); len(errs) > 0 {
		return fmt.Errorf("cluster domain %q: %s", c.ClusterDomain, strings.Join(errs, "; "))
	}
	if c.Kubeconfig == "" || strings.ContainsAny(c.Kubeconfig, " \t\n{}\"#") {
		return fmt.Errorf("node DNS kubeconfig path %q is empty or has characters a Corefile cannot hold", c.Kubeconfig)
	}
	for _, u := range c.Upstreams {
		if _, err := upstreamHostPort(u); err != nil {
			return err
		}
	}
	return nil
}

// upstreamHostPort turns "ip" or "ip:port" into "ip:port" ("[v6]:port").
func upstreamHostPort(u string) (string, error) {
	if ip := net.ParseIP(u); ip != nil {
		return net.JoinHostPort(ip.String(), "53"), nil
	}
	host, port, err := net.SplitHostPort(u)
	if err == nil && net.ParseIP(host) != nil {
		return net.JoinHostPort(net.ParseIP(host).String(), port), nil
	}
	return "", fmt.Errorf("upstream resolver %q is not an IP address or IP:port", u)
}

// Corefile renders the server's configuration: one server block bound to
// Address only, answering the cluster's zone from the apiserver and
// forwarding the rest, with a cache in front of both.
func (c Config) Corefile() (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	c = c.withDefaults()
	var b strings.Builder
	fmt.Fprintf(&b, ".:%d {\n", c.Port)
	fmt.Fprintf(&b, "    bind %s\n", c.Address)
	b.WriteString("    errors\n")
	// serve_stale keeps answering names (cluster ones too) whose source is
	// unreachable: the device may be offline for days.
	fmt.Fprintf(&b, "    cache 30 {\n        serve_stale %s\n    }\n", c.StaleFor)
	fmt.Fprintf(&b, "    kubernetes %s in-addr.arpa ip6.arpa {\n", c.ClusterDomain)
	fmt.Fprintf(&b, "        kubeconfig %s\n", c.Kubeconfig)
	// Pod A records are not served: `pods verified` would need every pod
	// of the cluster (list/watch pods), more than this node may read.
	b.WriteString("        pods disabled\n")
	b.WriteString("        fallthrough in-addr.arpa ip6.arpa\n")
	b.WriteString("        ttl 30\n")
	b.WriteString("    }\n")
	if len(c.Upstreams) > 0 {
		var ups []string
		for _, u := range c.Upstreams {
			hp, _ := upstreamHostPort(u)
			ups = append(ups, hp)
		}
		fmt.Fprintf(&b, "    forward . %s\n", strings.Join(ups, " "))
	}
	b.WriteString("}\n")
	return b.String(), nil
}
