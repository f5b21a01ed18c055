// Package dra is evelet's Dynamic Resource Allocation driver: it offers the
// EVE I/O adapters the device owner gives to Kubernetes
// (evelet.policy.devices) as devices in a ResourceSlice of the node, and
// prepares allocated ResourceClaims by writing a CDI spec per claim
// (dra/claimspec), which the CRI shim applies for the claim's pods only.
// When the owner withdraws an adapter, the pods whose claims hold it are
// evicted (with an Event) and the slice shrinks. docs/devices.md.
//
// The driver runs inside the agent with the kubelet's own credentials:
// the Node authorizer and NodeRestriction let a node manage the
// ResourceSlices whose spec.nodeName is its own, read the ResourceClaims of
// its pods, create Events and evict its own pods.
package dra

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lf-edge/evelet/dra/claimspec"
	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/utils/ptr"
)

// DriverName is the DRA driver's name: DeviceClasses select on it, and it
// is the domain of the devices' attributes.
const DriverName = "eve.lf-edge.org"

// Event reasons on pods.
const (
	ReasonDeviceWithdrawn = "DeviceWithdrawn"
)

// Config wires the driver.
type Config struct {
	// NodeName is the node whose devices these are (the ResourceSlice's
	// pool and spec.nodeName).
	NodeName string
	// Client acts with the kubelet's credentials.
	Client kubernetes.Interface
	// KubeletRootDir is the kubelet's --root-dir: the driver registers in
	// its plugins_registry/ and serves in plugins/<driver>/.
	KubeletRootDir string
	// CDIDir holds the claim specs (internal/layout State.CDI).
	CDIDir string
	// EVE is EVE's pubsub root (domainmgr's AssignableAdapters).
	EVE pubsub.Root
	// Sysfs is /sys ("" means /sys).
	Sysfs string
	// Assigned returns the owner's evelet.policy.devices labels.
	Assigned func() []string
	// Kick wakes the loop when the owner's items change (may be nil).
	Kick <-chan struct{}
	// Resync is how often EVE's adapter list is re-read (0: 2 s).
	Resync time.Duration
	Log    *logrus.Entry
}

// Driver is the running driver.
type Driver struct {
	cfg Config
	log *logrus.Entry

	mu      sync.Mutex
	devices map[string]Device // published devices by name
	// evicted remembers pods already told (one Event each).
	evicted map[types.UID]bool
}

// New returns a driver; Run starts it.
func New(cfg Config) *Driver {
	if cfg.Sysfs == "" {
		cfg.Sysfs = "/sys"
	}
	if cfg.Resync == 0 {
		cfg.Resync = 2 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	return &Driver{cfg: cfg, log: cfg.Log, evicted: map[types.UID]bool{}}
}

// Run registers the driver with the kubelet, publishes the assigned
// devices and follows the owner's changes until ctx ends.
func (d *Driver) Run(ctx context.Context) error {
	pluginDir := filepath.Join(d.cfg.KubeletRootDir, "plugins", DriverName)
	regDir := filepath.Join(d.cfg.KubeletRootDir, "plugins_registry")
	for _, dir := range []string{pluginDir, regDir, d.cfg.CDIDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	helper, err := kubeletplugin.Start(ctx, d,
		kubeletplugin.DriverName(DriverName),
		kubeletplugin.NodeName(d.cfg.NodeName),
		kubeletplugin.KubeClient(d.cfg.Client),
		kubeletplugin.RegistrarDirectoryPath(regDir),
		kubeletplugin.PluginDataDirectoryPath(pluginDir),
	)
	if err != nil {
		return fmt.Errorf("DRA kubelet plugin: %w", err)
	}
	defer helper.Stop()
	d.log.WithField("driver", DriverName).Info("DRA driver registered with the kubelet")
	tick := time.NewTicker(d.cfg.Resync)
	defer tick.Stop()
	var published []Device
	first := true
	for {
		sel := d.selection()
		if first || !reflect.DeepEqual(sel.Devices, published) {
			if err := helper.PublishResources(ctx, d.resources(sel.Devices)); err != nil {
				d.log.WithError(err).Error("ResourceSlice not published")
			} else {
				d.logChange(published, sel)
				published, first = sel.Devices, false
			}
		}
		d.evictWithdrawn(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-d.cfg.Kick:
		}
	}
}

// selection reads EVE's adapters and the owner's list and records the
// devices now offered.
func (d *Driver) selection() Selection {
	aa, err := ReadAdapters(d.cfg.EVE)
	if err != nil {
		d.log.WithError(err).Warn("EVE's adapter list unreadable; offering no device")
	}
	sel := Select(aa, d.cfg.Assigned(), d.cfg.Sysfs)
	m := map[string]Device{}
	for _, dev := range sel.Devices {
		m[dev.Name] = dev
	}
	d.mu.Lock()
	d.devices = m
	d.mu.Unlock()
	return sel
}

func (d *Driver) logChange(old []Device, sel Selection) {
	names := func(ds []Device) []string {
		var out []string
		for _, x := range ds {
			out = append(out, x.Name+"="+x.Adapter)
		}
		return out
	}
	d.log.WithFields(logrus.Fields{"devices": names(sel.Devices), "before": names(old), "refused": sel.Refused}).
		Info("devices offered to Kubernetes")
}

// resources is the node's one pool with one slice of the devices.
func (d *Driver) resources(devs []Device) resourceslice.DriverResources {
	var out []resourceapi.Device
	for _, dev := range devs {
		attrs := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
			"class":   {StringValue: ptr.To(dev.Class)},
			"adapter": {StringValue: ptr.To(dev.Adapter)},
		}
		add := func(k, v string) {
			if v != "" {
				attrs[resourceapi.QualifiedName(k)] = resourceapi.DeviceAttribute{StringValue: ptr.To(v)}
			}
		}
		add("phylabel", dev.Phylabel)
		add("vendorID", dev.VendorID)
		add("productID", dev.ProductID)
		add("pciAddress", dev.PCI)
		add("usbAddress", dev.USB)
		add("ifname", dev.Ifname)
		out = append(out, resourceapi.Device{Name: dev.Name, Attributes: attrs})
	}
	return resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{
		d.cfg.NodeName: {Slices: []resourceslice.Slice{{Devices: out}}},
	}}
}

// PrepareResourceClaims writes a CDI spec per claim naming the devices
// allocated to it on this node (kubeletplugin.DRAPlugin).
func (d *Driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	out := map[types.UID]kubeletplugin.PrepareResult{}
	for _, c := range claims {
		devs, err := d.prepare(c)
		if err != nil {
			d.log.WithError(err).WithField("claim", c.Namespace+"/"+c.Name).Warn("claim not prepared")
		}
		out[c.UID] = kubeletplugin.PrepareResult{Err: err, Devices: devs}
	}
	return out, nil
}

func (d *Driver) prepare(c *resourceapi.ResourceClaim) ([]kubeletplugin.Device, error) {
	if c.Status.Allocation == nil {
		return nil, fmt.Errorf("claim %s/%s is not allocated", c.Namespace, c.Name)
	}
	spec := claimspec.Claim{UID: string(c.UID), Namespace: c.Namespace, Name: c.Name}
	for _, r := range c.Status.ReservedFor {
		if r.Resource == "pods" && r.APIGroup == "" {
			spec.Pods = append(spec.Pods, claimspec.Pod{UID: string(r.UID), Namespace: c.Namespace, Name: r.Name})
		}
	}
	d.mu.Lock()
	offered := d.devices
	d.mu.Unlock()
	others, _ := claimspec.List(d.cfg.CDIDir)
	var result []kubeletplugin.Device
	for _, r := range c.Status.Allocation.Devices.Results {
		if r.Driver != DriverName {
			continue
		}
		if r.Pool != d.cfg.NodeName {
			return nil, fmt.Errorf("device %s is in pool %q, not this node's", r.Device, r.Pool)
		}
		dev, ok := offered[r.Device]
		if !ok {
			return nil, fmt.Errorf("device %s is not (or no longer) assigned to Kubernetes by the device owner", r.Device)
		}
		// The last line of defence against one adapter in two claims.
		for _, o := range others {
			if o.UID == spec.UID {
				continue
			}
			if _, taken := o.Device(dev.Name); taken {
				return nil, fmt.Errorf("device %s is already prepared for claim %s/%s", dev.Name, o.Namespace, o.Name)
			}
		}
		cd := claimspec.Device{Device: dev.Name, Adapter: dev.Adapter, Label: dev.Label, Class: dev.Class, PCI: dev.PCI, USB: dev.USB,
			Nodes: dev.Nodes, Env: deviceEnv(dev)}
		if _, dup := spec.Device(dev.Name); !dup {
			spec.Devices = append(spec.Devices, cd)
		}
		result = append(result, kubeletplugin.Device{
			Requests: []string{r.Request}, PoolName: r.Pool, DeviceName: r.Device,
			CDIDeviceIDs: []string{claimspec.DeviceID(spec.UID, dev.Name)},
		})
	}
	if err := claimspec.Write(d.cfg.CDIDir, spec); err != nil {
		return nil, fmt.Errorf("CDI spec of claim %s/%s: %w", c.Namespace, c.Name, err)
	}
	return result, nil
}

// deviceEnv tells the workload which EVE adapter it got and where.
func deviceEnv(dev Device) []string {
	key := "EVE_DEVICE_" + strings.ToUpper(strings.ReplaceAll(dev.Name, "-", "_"))
	env := []string{key + "_ADAPTER=" + dev.Adapter, key + "_CLASS=" + dev.Class}
	if len(dev.Nodes) > 0 {
		env = append(env, key+"_PATH="+dev.Nodes[0])
	}
	if dev.PCI != "" {
		env = append(env, key+"_PCI="+dev.PCI)
	}
	return env
}

// UnprepareResourceClaims removes the claims' CDI specs
// (kubeletplugin.DRAPlugin).
func (d *Driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	out := map[types.UID]error{}
	for _, c := range claims {
		out[c.UID] = claimspec.Remove(d.cfg.CDIDir, string(c.UID))
	}
	return out, nil
}

// HandleError logs background errors (publishing slices); all of them are
// retried by the library or on the next change.
func (d *Driver) HandleError(ctx context.Context, err error, msg string) {
	d.log.WithError(err).WithField("recoverable", errors.Is(err, kubeletplugin.ErrRecoverable)).Error(msg)
}

// evictWithdrawn evicts the pods of every prepared claim holding a device
// the owner no longer offers, each with an Event; the kubelet unprepares
// the claim once its pods are gone.
func (d *Driver) evictWithdrawn(ctx context.Context) {
	claims, err := claimspec.List(d.cfg.CDIDir)
	if err != nil {
		d.log.WithError(err).Warn("some prepared claims unreadable")
	}
	d.mu.Lock()
	offered := d.devices
	d.mu.Unlock()
	for _, c := range claims {
		var gone []string
		for _, dev := range c.Devices {
			if o, ok := offered[dev.Device]; !ok || o.Adapter != dev.Adapter {
				gone = append(gone, dev.Adapter)
			}
		}
		if len(gone) == 0 {
			continue
		}
		sort.Strings(gone)
		for _, p := range c.Pods {
			d.evict(ctx, c, p, slices.Compact(gone))
		}
	}
}

func (d *Driver) evict(ctx context.Context, c claimspec.Claim, p claimspec.Pod, gone []string) {
	log := d.log.WithFields(logrus.Fields{"pod": p.Namespace + "/" + p.Name, "claim": c.Namespace + "/" + c.Name, "adapters": gone})
	pod, err := d.cfg.Client.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) || (err == nil && (string(pod.UID) != p.UID || pod.DeletionTimestamp != nil)) {
		return // gone or going
	}
	if err != nil {
		log.WithError(err).Warn("pod of a withdrawn device not read; retrying")
		return
	}
	d.mu.Lock()
	told := d.evicted[pod.UID]
	d.evicted[pod.UID] = true
	d.mu.Unlock()
	msg := fmt.Sprintf("the device owner withdrew EVE adapter(s) %s from Kubernetes (config item evelet.policy.devices); evicting the pod that holds them through claim %s",
		strings.Join(gone, ", "), c.Name)
	if !told {
		d.event(ctx, pod, msg)
		log.Warn("device withdrawn: evicting its pod")
	}
	err = d.cfg.Client.PolicyV1().Evictions(p.Namespace).Evict(ctx, &policyv1.Eviction{
		ObjectMeta:    metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace},
		DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		// 429: a PodDisruptionBudget holds it; retried on the next round.
		log.WithError(err).Warn("eviction refused; retrying")
	}
}

func (d *Driver) event(ctx context.Context, pod *corev1.Pod, msg string) {
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: pod.Name + ".", Namespace: pod.Namespace},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace, Name: pod.Name,
			UID: pod.UID, ResourceVersion: pod.ResourceVersion},
		Reason: ReasonDeviceWithdrawn, Message: msg, Type: corev1.EventTypeWarning,
		Source:         corev1.EventSource{Component: "evelet-dra", Host: d.cfg.NodeName},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: DriverName, ReportingInstance: d.cfg.NodeName,
	}
	if _, err := d.cfg.Client.CoreV1().Events(pod.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		d.log.WithError(err).Warn("event not recorded")
	}
}
