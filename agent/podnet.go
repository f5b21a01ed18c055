package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/cni/podnet"
	"github.com/lf-edge/evelet/internal/layout"
)

// podCIDRWait bounds how long the agent waits for the controller-manager
// to give the Node a podCIDR before it reports that the cluster gives none.
// podCIDRPoll is how often it asks.
var (
	podCIDRWait = 10 * time.Minute
	podCIDRPoll = 2 * time.Second
)

// podNetSettings are the owner's evelet.pod-network items in force
// (refused values were reported by publishConfigErrors and keep defaults).
func (a *Agent) podNetSettings() podnet.Settings {
	s, _ := podnet.FromConfigItems(a.configItems())
	return s
}

// defaultNetworkName is evelet-cni's delegate for eth0: the network the
// agent writes from the Node's podCIDRs in podcidr mode, else the owner's
// conflist (--cni-default-network).
func (a *Agent) defaultNetworkName() string {
	if a.podNetSettings().Mode == podnet.ModePodCIDR {
		return podnet.NetworkName
	}
	return cmp.Or(a.cfg.CNI.DefaultNetwork, "evelet-default")
}

func (a *Agent) podNetNFT() podnet.NFT {
	if a.podnetNFT != nil {
		return a.podnetNFT
	}
	return podnet.SystemNFT
}

// startPodNetwork, in podcidr mode, waits for the node's credential and
// its Node's podCIDRs, then writes the default pod network and its
// masquerade. Until then pod sandboxes fail their CNI ADD ("no CNI config
// named evelet-podcidr") and the kubelet retries them.
func (a *Agent) startPodNetwork(ctx context.Context, j *intent.Join) (waitDone func()) {
	s := a.podNetSettings()
	if !a.cfg.CNI.enabled() || s.Mode != podnet.ModePodCIDR {
		return func() {}
	}
	log := a.log.WithFields(logrus.Fields{"node": j.NodeName, "component": "pod-network"})
	done := make(chan struct{})
	go func() {
		defer close(done)
		cs, err := waitNodeClient(ctx, a.store.KubeconfigPath())
		if err != nil {
			return // ctx ended
		}
		cidrs, err := podnet.WaitPodCIDRs(ctx, cs, j.NodeName, podCIDRPoll, podCIDRWait)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			log.WithError(err).Error("pod network not set up: the Node's podCIDR could not be read")
			return
		case len(cidrs) == 0:
			log.WithField("waited", podCIDRWait).Error("pod network not set up: the Node has no podCIDR; the cluster must run the controller-manager with --allocate-node-cidrs (docs/pod-network.md)")
			return
		}
		if err := a.applyPodNetwork(ctx, cidrs, s.ClusterCIDRs); err != nil {
			log.WithError(err).Error("pod network not set up")
			return
		}
		log.WithFields(logrus.Fields{"podCIDRs": cidrs, "clusterCIDRs": s.ClusterCIDRs, "hostGW": s.HostGW}).Info("default pod network from the Node's podCIDRs")
		if s.HostGW {
			// A resync, not a wait: Nodes come and go for as long as the
			// node runs.
			wait.UntilWithContext(ctx, func(ctx context.Context) {
				if err := a.syncHostGW(ctx, cs, j.NodeName, cidrs); err != nil {
					log.WithError(err).Warn("host-gw routes not synced")
				}
			}, hostGWResync)
		}
	}()
	return func() { <-done }
}

// waitNodeClient waits until the node's kubeconfig makes a client. With
// a bootstrap token the kubelet writes the kubeconfig naming
// kubelet-client-current.pem, which may not be readable yet when the file
// appears: a one-shot attempt then left the node without a pod network
// for the rest of the join. Only ctx's end stops the wait.
func waitNodeClient(ctx context.Context, kubeconfig string) (kubernetes.Interface, error) {
	var cs kubernetes.Interface
	err := wait.PollUntilContextCancel(ctx, nodeClientPoll, true, func(context.Context) (bool, error) {
		if _, err := os.Stat(kubeconfig); err != nil {
			return false, nil
		}
		c, err := nodeClient(kubeconfig)
		if err != nil {
			return false, nil
		}
		cs = c
		return true, nil
	})
	return cs, err
}

// nodeClientPoll is how often waitNodeClient tries.
var nodeClientPoll = 500 * time.Millisecond

// hostGWResync is how often the host-gw routes follow the Node list.
var hostGWResync = 15 * time.Second

// syncHostGW routes every other Node's podCIDRs via its InternalIP when it
// is on the link that holds this node's own InternalIP.
func (a *Agent) syncHostGW(ctx context.Context, cs kubernetes.Interface, self string, own []netip.Prefix) error {
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	link := ""
	var onLink []netip.Prefix
	for i := range nodes.Items {
		if nodes.Items[i].Name != self {
			continue
		}
		for _, ad := range nodes.Items[i].Status.Addresses {
			ip, err := netip.ParseAddr(ad.Address)
			if ad.Type != corev1.NodeInternalIP || err != nil {
				continue
			}
			l, p, err := a.hostGW().onLink(ip)
			if err != nil {
				return err
			}
			if link == "" || l == link {
				link, onLink = l, append(onLink, p...)
			}
		}
	}
	if link == "" {
		return fmt.Errorf("node %s has no InternalIP on this device", self)
	}
	return a.hostGW().sync(link, podnet.HostGWRoutes(self, own, onLink, nodes.Items))
}

// hostGWOps reach the kernel's routes (podnet's functions; fakes in tests).
type hostGWOps struct {
	onLink func(netip.Addr) (string, []netip.Prefix, error)
	sync   func(link string, want []podnet.HostGWRoute) error
	remove func() error
	// removeBridge deletes the podcidr network's bridge on leave.
	removeBridge func() error
}

func (a *Agent) hostGW() hostGWOps {
	if a.podnetRoutes != nil {
		return *a.podnetRoutes
	}
	return hostGWOps{onLink: podnet.OnLink, sync: podnet.SyncHostGWRoutes, remove: podnet.RemoveHostGWRoutes, removeBridge: podnet.RemoveBridge}
}

// removePodBridge deletes the bridge unless a test stubbed the host ops
// without it.
func (a *Agent) removePodBridge() error {
	if rb := a.hostGW().removeBridge; rb != nil {
		return rb()
	}
	return nil
}

// applyPodNetwork writes the masquerade first, so no pod ever leaves
// unmasqueraded, then the conflist.
func (a *Agent) applyPodNetwork(ctx context.Context, cidrs, clusterCIDRs []netip.Prefix) error {
	if err := podnet.Masquerade(ctx, a.podNetNFT(), cidrs, clusterCIDRs); err != nil {
		return err
	}
	n := podnet.Network{PodCIDRs: cidrs, IPAMDir: a.podNetIPAMDir()}
	_, err := n.WriteConflist(a.cfg.CNI.ConfDir)
	return err
}

func (a *Agent) podNetIPAMDir() string {
	return filepath.Join(layout.State{Dir: a.cfg.StateDir}.CNI().Dir, "podnet-ipam")
}

// removePodNetwork undoes applyPodNetwork when the node leaves (the
// kubelet has stopped): the conflist, the masquerade table, the host-gw
// routes and the addresses handed out. Nothing to do when podcidr mode never wrote one.
func (a *Agent) removePodNetwork(ctx context.Context) error {
	if !a.cfg.CNI.enabled() {
		return nil
	}
	path := filepath.Join(a.cfg.CNI.ConfDir, podnet.ConflistFile)
	_, statErr := os.Stat(path)
	if errors.Is(statErr, os.ErrNotExist) && a.podNetSettings().Mode != podnet.ModePodCIDR {
		return nil
	}
	var errs []error
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(a.podNetIPAMDir()); err != nil {
		errs = append(errs, err)
	}
	if err := podnet.RemoveMasquerade(ctx, a.podNetNFT()); err != nil {
		errs = append(errs, err)
	}
	if err := a.hostGW().remove(); err != nil {
		errs = append(errs, err)
	}
	if err := a.removePodBridge(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("pod network: %w", err)
	}
	return nil
}
