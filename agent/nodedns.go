package agent

import (
	"cmp"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sync"
	"time"

	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/internal/atomicfile"
	kubeletshim "github.com/lf-edge/evelet/kubelet-shim"
	"github.com/lf-edge/evelet/nodedns"
	"github.com/sirupsen/logrus"
)

// NodeDNSOptions configure the node-local DNS server (docs/cluster-dns.md).
type NodeDNSOptions struct {
	// Enabled runs it (cmd/evelet turns it on by default). Off: the
	// kubelet gets no clusterDNS and ClusterFirst pods fall back to the
	// device's resolv.conf.
	Enabled bool
	// Address ("" : nodedns.DefaultAddress) and LinkName ("":
	// nodedns.DefaultLinkName) are where the server listens.
	Address, LinkName string
	// ClusterDomain is the cluster's DNS domain ("": cluster.local); the
	// join material does not carry it.
	ClusterDomain string
	// ResolvConf is the upstream fallback when EVE publishes no DNS
	// servers ("": /etc/resolv.conf).
	ResolvConf string
	// Log receives `evelet dns` output (nil: the kubelet's log).
	Log io.Writer
}

// upstreamsEvery is how often EVE's resolvers are re-read.
const upstreamsEvery = 10 * time.Second

func (o NodeDNSOptions) address() string  { return cmp.Or(o.Address, nodedns.DefaultAddress) }
func (o NodeDNSOptions) linkName() string { return cmp.Or(o.LinkName, nodedns.DefaultLinkName) }

// nodeDNSKubeconfig is what the DNS server reads the cluster with: the
// node's own credentials, through the local API cache while it serves (so
// cluster names resolve after a reboot offline).
func (a *Agent) nodeDNSKubeconfig() string {
	return cmp.Or(a.apiCacheKubeconfig("nodedns"), a.store.KubeconfigPath())
}

func (a *Agent) nodeDNSCorefile() string { return filepath.Join(a.cfg.RunDir, "nodedns", "Corefile") }

// clusterDNS is the kubelet's clusterDNS: the node-local server's address
// once its interface exists, else none.
func (a *Agent) clusterDNS() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.dnsAddr == "" {
		return nil
	}
	return []string{a.dnsAddr}
}

// startNodeDNS puts the address on evelet's interface and keeps `evelet
// dns` running for j until ctx ends or the returned func is called, which
// stops it and waits (a join that fails after this must not leave a DNS
// server running without its kubelet).
// Without the interface the kubelet gets no clusterDNS (pods resolve with
// the device's resolv.conf) rather than an address nobody answers on.
func (a *Agent) startNodeDNS(ctx context.Context, j *intent.Join) (stop func()) {
	o := a.cfg.NodeDNS
	log := a.log.WithFields(logrus.Fields{"node": j.NodeName, "component": "dns"})
	a.mu.Lock()
	a.dnsAddr = ""
	a.mu.Unlock()
	if !o.Enabled {
		return func() {}
	}
	if err := nodedns.EnsureLink(o.linkName(), o.address()); err != nil {
		log.WithError(err).Error("node-local DNS off: its interface could not be set up; pods use the device's resolvers")
		return func() {}
	}
	a.mu.Lock()
	a.dnsAddr = o.address()
	a.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a.runNodeDNS(ctx, log) }()
	return func() { cancel(); wg.Wait() }
}

// runNodeDNS writes the Corefile and supervises `evelet dns`, restarting it
// when EVE's resolvers change (CoreDNS reads its forward list once).
func (a *Agent) runNodeDNS(ctx context.Context, log *logrus.Entry) {
	o := a.cfg.NodeDNS
	out := o.Log
	if out == nil {
		out = a.cfg.KubeletLog
	}
	upstreams := func() []string {
		return nodedns.Upstreams(a.cfg.EVERoot, cmp.Or(o.ResolvConf, "/etc/resolv.conf"), o.address())
	}
	// Start on the local API cache when it comes up soon (it starts with
	// the kubelet), as kube-proxy does: a server that starts on it lists
	// through it while online, so its scopes are there for an offline
	// reboot, and it never has to be restarted onto it.
	a.waitAPICacheKubeconfig(ctx, "nodedns", apiCacheWait)
	var current []string
	for ctx.Err() == nil {
		if ups := upstreams(); len(ups) > 0 || current == nil {
			current = ups
		}
		kubeconfig := a.nodeDNSKubeconfig()
		cfg := nodedns.Config{Address: o.address(), ClusterDomain: o.ClusterDomain, Kubeconfig: kubeconfig, Upstreams: current}
		corefile, err := cfg.Corefile()
		if err == nil {
			err = os.MkdirAll(filepath.Dir(a.nodeDNSCorefile()), 0o700)
		}
		if err == nil {
			err = atomicfile.WriteFile(a.nodeDNSCorefile(), []byte(corefile), 0o600)
		}
		if err != nil {
			log.WithError(err).Error("node-local DNS not configured")
			if !a.sleep(ctx, a.cfg.RetryMax) {
				return
			}
			continue
		}
		log.WithFields(logrus.Fields{"upstreams": current, "kubeconfig": kubeconfig}).Info("node-local DNS configured")
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		sup := &kubeletshim.Supervisor{Log: log, Command: func() *exec.Cmd {
			cmd := a.roleCommand("dns", a.nodeDNSCorefile())
			cmd.Stdout, cmd.Stderr = out, out
			return cmd
		}}
		go func() { defer close(done); sup.Run(runCtx) }()
		for changed := false; !changed && ctx.Err() == nil; {
			if !a.sleep(ctx, upstreamsEvery) {
				break
			}
			ups := upstreams()
			// A new kubeconfig: the local API cache came up (or went).
			// A server reading the apiserver directly moves onto the
			// cache only while the cache is online: restarted onto it
			// offline, it would find none of its lists there and lose
			// the names it still answers from memory.
			next := a.nodeDNSKubeconfig()
			moveToCache := next != kubeconfig && next != a.store.KubeconfigPath()
			changed = len(ups) > 0 && !reflect.DeepEqual(ups, current) ||
				next != kubeconfig && (!moveToCache || a.apiCacheOnline())
		}
		stop()
		<-done
	}
}

// removeNodeDNS takes evelet's DNS interface away (on leave).
func (a *Agent) removeNodeDNS() error {
	a.mu.Lock()
	a.dnsAddr = ""
	a.mu.Unlock()
	if !a.cfg.NodeDNS.Enabled {
		return nil
	}
	return nodedns.RemoveLink(a.cfg.NodeDNS.linkName())
}
