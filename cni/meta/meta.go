package meta

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/sirupsen/logrus"

	"github.com/lf-edge/evelet/cni/annotation"
	"github.com/lf-edge/evelet/cni/nad"
	"github.com/lf-edge/evelet/cni/tenantjson"
	"github.com/lf-edge/evelet/internal/kubeerr"
)

// Pod is what the plugin needs of a pod.
type Pod struct {
	UID         string
	NodeName    string
	Annotations map[string]string
}

// Pods reads pods and sets one annotation on them.
type Pods interface {
	Get(ctx context.Context, namespace, name string) (*Pod, error)
	Annotate(ctx context.Context, namespace, name, key, value string) error
}

// NADs resolves a network a pod in podNamespace names.
type NADs interface {
	Resolve(ctx context.Context, podNamespace, namespace, name string) (*nad.Network, error)
}

// Clients are the API clients one invocation uses. Pods is nil when the
// node has no credential at all; NADs is nil, and Pods cannot annotate,
// without the evelet-network credential.
type Clients struct {
	Pods        Pods
	NADs        NADs
	CanAnnotate bool
	// Events records an event on a pod (nil: none), with the
	// evelet-network credential: multus's AddedInterface per network.
	Events Events
}

// Events records a Normal event about a pod.
type Events interface {
	PodEvent(ctx context.Context, namespace, name, uid, reason, message string) error
}

// Plugin is evelet-cni. Clients builds the API clients from the
// configuration (KubeClients in the binary, fakes in tests).
type Plugin struct {
	Log     *logrus.Entry
	Clients func(*Conf) (*Clients, error)
	Exec    invoke.Exec // nil: run the delegate binaries
	// APITimeout bounds each apiserver call.
	APITimeout time.Duration
}

func (p *Plugin) log() *logrus.Entry {
	if p.Log == nil {
		return logrus.NewEntry(logrus.StandardLogger())
	}
	return p.Log
}

func (p *Plugin) cni(c *Conf, args *skel.CmdArgs) *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir(splitPath(args.Path), c.resultsDir(), p.Exec)
}

func splitPath(p string) []string {
	var out []string
	for _, d := range strings.Split(p, string(os.PathListSeparator)) {
		if d != "" {
			out = append(out, d)
		}
	}
	return out
}

func (p *Plugin) apiCtx() (context.Context, context.CancelFunc) {
	t := p.APITimeout
	if t == 0 {
		t = 15 * time.Second
	}
	return context.WithTimeout(context.Background(), t)
}

// podIdentity is the pod the runtime names in CNI_ARGS.
type podIdentity struct{ Namespace, Name, UID string }

func parseArgs(s string) ([][2]string, podIdentity, error) {
	var out [][2]string
	var id podIdentity
	if s == "" {
		return nil, id, nil
	}
	for _, kv := range strings.Split(s, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, id, fmt.Errorf("evelet-cni: CNI_ARGS: %q is not KEY=VALUE", kv)
		}
		out = append(out, [2]string{k, v})
		switch k {
		case "K8S_POD_NAMESPACE":
			id.Namespace = v
		case "K8S_POD_NAME":
			id.Name = v
		case "K8S_POD_UID":
			id.UID = v
		}
	}
	return out, id, nil
}

// defaultNetwork loads the default pod network's conflist from ConfDir.
func defaultNetwork(c *Conf) (*libcni.NetworkConfigList, error) {
	raw, err := nad.FromConfDir(c.ConfDir, c.Delegate)
	if err != nil {
		return nil, fmt.Errorf("evelet-cni: default network: %w", err)
	}
	l, err := nad.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("evelet-cni: default network %q: %w", c.Delegate, err)
	}
	if len(l.Plugins) == 0 {
		return nil, fmt.Errorf("evelet-cni: default network %q has no plugins", c.Delegate)
	}
	for _, pl := range l.Plugins {
		if pl.Network.Type == PluginType {
			return nil, fmt.Errorf("evelet-cni: default network %q cannot be evelet-cni itself", c.Delegate)
		}
	}
	return l, nil
}

// annotateTarget is the pod network-status goes to (nil: none).
type annotateTarget struct {
	pods            Pods
	namespace, name string
	events          Events
}

// plan works out, before anything is attached, every attachment of the
// sandbox. All refusals (bad annotation, unknown or forbidden NAD, missing
// credential) happen here, so a refused pod has nothing half attached.
func (p *Plugin) plan(c *Conf, args *skel.CmdArgs, cniArgs [][2]string, id podIdentity) (*record, *annotateTarget, error) {
	def, err := defaultNetwork(c)
	if err != nil {
		return nil, nil, err
	}
	rec := &record{ContainerID: args.ContainerID, NetNS: args.Netns, IfName: args.IfName, Args: cniArgs,
		PodNamespace: id.Namespace, PodName: id.Name, PodUID: id.UID}
	rec.Attachments = append(rec.Attachments, attachment{Ref: def.Name, IfName: args.IfName, Config: def.Bytes,
		CapabilityArgs: c.RuntimeConfig, Default: true})
	if id.Namespace == "" || id.Name == "" {
		return rec, nil, nil // not a Kubernetes pod: default network only
	}
	cl, err := p.Clients(c)
	if err != nil {
		return nil, nil, fmt.Errorf("evelet-cni: %w", err)
	}
	if cl.Pods == nil {
		return rec, nil, nil
	}
	ctx, cancel := p.apiCtx()
	defer cancel()
	pod, err := cl.Pods.Get(ctx, id.Namespace, id.Name)
	if err != nil {
		if kubeerr.Unreachable(err) && id.UID != "" {
			if pl, perr := c.loadPlan(id.Namespace, id.Name, id.UID); perr == nil && pl != nil {
				// The owner's allow-lists may have changed since: what they
				// refuse now is refused, outage or not.
				for i := range pl.Attachments {
					a := &pl.Attachments[i]
					l, err := a.list()
					if err == nil {
						ns, _, _ := strings.Cut(a.Ref, "/")
						err = c.Rules.Allows(id.Namespace, ns, l)
					}
					if err != nil {
						return nil, nil, fmt.Errorf("evelet-cni: pod %s/%s: re-attaching %s (interface %s) during an apiserver outage: NetworkAttachmentDefinition %s: %w", id.Namespace, id.Name, a.Ref, a.IfName, a.Ref, err)
					}
				}
				p.log().WithError(err).WithFields(logrus.Fields{"pod": id.Namespace + "/" + id.Name, "networks": len(pl.Attachments)}).
					Warn("apiserver unreachable: attaching the networks of the pod's last sandbox")
				rec.Attachments = append(rec.Attachments, pl.Attachments...)
				rec.planned = true
				return rec, nil, nil
			}
		}
		return nil, nil, fmt.Errorf("evelet-cni: reading pod %s/%s for its networks: %w", id.Namespace, id.Name, err)
	}
	rec.read = true
	if id.UID != "" && pod.UID != id.UID {
		return nil, nil, fmt.Errorf("evelet-cni: pod %s/%s has uid %s, the runtime asked for %s", id.Namespace, id.Name, pod.UID, id.UID)
	}
	sels, err := annotation.Parse(pod.Annotations[annotation.NetworksKey], id.Namespace, args.IfName)
	if err != nil {
		return nil, nil, fmt.Errorf("evelet-cni: pod %s/%s: %w", id.Namespace, id.Name, err)
	}
	// Only a pod bound to this node is annotated: RBAC cannot narrow the
	// credential's patch right to this node's pods, the plugin does.
	var target *annotateTarget
	if cl.CanAnnotate && c.NodeName != "" && pod.NodeName == c.NodeName {
		target = &annotateTarget{cl.Pods, id.Namespace, id.Name, cl.Events}
	}
	if len(sels) == 0 {
		return rec, target, nil
	}
	if cl.NADs == nil || !cl.CanAnnotate {
		return nil, nil, fmt.Errorf("evelet-cni: pod %s/%s asks for networks (%s) but this node has no evelet-network credential: the join material carries none (see docs/networks.md)", id.Namespace, id.Name, refs(sels))
	}
	if c.NodeName == "" || pod.NodeName != c.NodeName {
		return nil, nil, fmt.Errorf("evelet-cni: pod %s/%s is bound to node %q, not to this node %q", id.Namespace, id.Name, pod.NodeName, c.NodeName)
	}
	claimed := slices.ContainsFunc(sels, func(s annotation.Selection) bool { return s.HasDefaultRoute })
	for i, s := range sels {
		where := fmt.Sprintf("network %d (%s, interface %s)", i+1, s.Ref(), s.Interface)
		n, err := cl.NADs.Resolve(ctx, id.Namespace, s.Namespace, s.Name)
		if err != nil {
			return nil, nil, fmt.Errorf("evelet-cni: pod %s/%s: %s: %w", id.Namespace, id.Name, where, err)
		}
		if len(s.Ignored) > 0 {
			p.log().WithFields(logrus.Fields{"pod": id.Namespace + "/" + id.Name, "network": s.Ref(), "keys": s.Ignored}).
				Warn("network selection keys evelet-cni does not act on were ignored")
		}
		a, err := selectionAttachment(s, n, c.EveNIConfig, claimed)
		if err != nil {
			return nil, nil, fmt.Errorf("evelet-cni: pod %s/%s: %s: %w", id.Namespace, id.Name, where, err)
		}
		rec.Attachments = append(rec.Attachments, *a)
	}
	return rec, target, nil
}

func refs(sels []annotation.Selection) string {
	var r []string
	for _, s := range sels {
		r = append(r, s.Ref())
	}
	return strings.Join(r, ", ")
}

// selectionAttachment turns a selection and its NAD into one delegate run:
// the runtimeConfig capabilities (CNI conventions) and cni-args.
//
// When the pod chose a network for its default route (claimed), eve-ni
// delegates are told so through their own "defaultRoute" switch: on for
// the chosen network, off for the others, whatever the NAD said, so that
// their results show the routes the pod really gets.
func selectionAttachment(s annotation.Selection, n *nad.Network, eveniConfig string, claimed bool) (*attachment, error) {
	caps := map[string]any{}
	want := func(cap string, v any) { caps[cap] = v }
	if s.MAC != "" {
		want("mac", s.MAC)
	}
	if len(s.IPs) > 0 {
		want("ips", s.IPs)
	}
	if len(s.PortMappings) > 0 {
		want("portMappings", s.PortMappings)
	}
	if s.Bandwidth != nil {
		want("bandwidth", s.Bandwidth)
	}
	if s.InfinibandGUID != "" {
		want("infinibandGUID", s.InfinibandGUID)
	}
	// A capability no plugin of the NAD declares would be dropped silently
	// by libcni: refuse instead, the pod asked for it.
	for cap := range caps {
		found := false
		for _, pl := range n.List.Plugins {
			if pl.Network.Capabilities[cap] {
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("NetworkAttachmentDefinition %s: no plugin of it supports %q (its config lacks \"capabilities\":{%q:true})", n.Ref(), cap, cap)
		}
	}
	cfg := n.List.Bytes
	var eveniDefault *bool
	if claimed {
		eveniDefault = &s.HasDefaultRoute
	}
	if len(s.CNIArgs) > 0 || eveniConfig != "" || eveniDefault != nil {
		var err error
		if cfg, err = withNodeSettings(cfg, s.CNIArgs, eveniConfig, eveniDefault); err != nil {
			return nil, fmt.Errorf("NetworkAttachmentDefinition %s: %w", n.Ref(), err)
		}
	}
	return &attachment{Ref: n.Ref(), IfName: s.Interface, Config: cfg, CapabilityArgs: caps,
		ClaimsDefaultRoute: s.HasDefaultRoute, DefaultRouteGateways: s.DefaultRoute}, nil
}

// withNodeSettings puts cni-args into every plugin's "args":{"cni":{...}}
// (CNI conventions), keeping what the NAD set there, and the node's eve-ni
// settings path and, when set, defaultRoute into every eve-ni plugin.
func withNodeSettings(list []byte, cniArgs map[string]any, eveniConfig string, eveniDefault *bool) ([]byte, error) {
	var m map[string]any
	if err := json.Unmarshal(list, &m); err != nil {
		return nil, err
	}
	plugins, _ := m["plugins"].([]any)
	for _, pl := range plugins {
		pm, ok := pl.(map[string]any)
		if !ok {
			continue
		}
		// Keys in any letter case: a second "eveniconfig" beside the
		// node's "eveniConfig" would be the one eve-ni decodes.
		typ, _ := tenantjson.Get(pm, "type")
		if typ == "eve-ni" && eveniConfig != "" {
			tenantjson.Set(pm, "eveniConfig", eveniConfig)
		}
		if typ == "eve-ni" && eveniDefault != nil {
			tenantjson.Set(pm, "defaultRoute", *eveniDefault)
		}
		if len(cniArgs) == 0 {
			continue
		}
		av, _ := tenantjson.Get(pm, "args")
		a, _ := av.(map[string]any)
		if a == nil {
			a = map[string]any{}
		}
		cv, _ := tenantjson.Get(a, "cni")
		cn, _ := cv.(map[string]any)
		if cn == nil {
			cn = map[string]any{}
		}
		for k, v := range cniArgs {
			tenantjson.Set(cn, k, v)
		}
		tenantjson.Set(a, "cni", cn)
		tenantjson.Set(pm, "args", a)
	}
	return json.Marshal(m)
}

func rtConf(rec *record, a *attachment) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: rec.ContainerID, NetNS: rec.NetNS, IfName: a.IfName,
		Args: rec.Args, CapabilityArgs: a.CapabilityArgs}
}

// Add is CNI ADD.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	res, err := p.add(args)
	if err != nil {
		return err
	}
	return res.Print()
}

// add runs ADD and returns the default network's result, in the version
// of the configuration.
func (p *Plugin) add(args *skel.CmdArgs) (types.Result, error) {
	c, err := ParseConf(args.StdinData)
	if err != nil {
		return nil, err
	}
	cniArgs, id, err := parseArgs(args.Args)
	if err != nil {
		return nil, err
	}
	rec, pod, err := p.plan(c, args, cniArgs, id)
	if err != nil {
		return nil, err
	}
	if err := c.saveRecord(rec); err != nil {
		return nil, fmt.Errorf("evelet-cni: attachment cache: %w", err)
	}
	cn := p.cni(c, args)
	ctx := context.Background()
	var results []types.Result
	for i := range rec.Attachments {
		a := &rec.Attachments[i]
		l, err := a.list()
		if err == nil {
			var r types.Result
			r, err = cn.AddNetworkList(ctx, l, rtConf(rec, a))
			results = append(results, r)
		}
		if err != nil {
			what := fmt.Sprintf("default network %s", a.Ref)
			if !a.Default {
				what = fmt.Sprintf("network %d (%s, interface %s)", i, a.Ref, a.IfName)
			}
			if rec.PodName != "" {
				what = fmt.Sprintf("pod %s/%s: %s", rec.PodNamespace, rec.PodName, what)
			}
			err = fmt.Errorf("evelet-cni: %s: %w", what, err)
			return nil, p.undo(c, cn, rec, i, err)
		}
	}
	if i := rec.claimIndex(); i >= 0 {
		if err := p.applyDefaultRoute(c, rec, i, results[i]); err != nil {
			return nil, p.undo(c, cn, rec, len(rec.Attachments)-1, err)
		}
	}
	status, err := networkStatus(rec, results)
	if err != nil {
		return nil, p.undo(c, cn, rec, len(rec.Attachments)-1, fmt.Errorf("evelet-cni: %w", err))
	}
	if pod != nil {
		ctx, cancel := p.apiCtx()
		err := pod.pods.Annotate(ctx, pod.namespace, pod.name, annotation.StatusKey, status)
		cancel()
		if err != nil {
			return nil, p.undo(c, cn, rec, len(rec.Attachments)-1, fmt.Errorf("evelet-cni: writing %s on pod %s/%s: %w", annotation.StatusKey, pod.namespace, pod.name, err))
		}
		p.addedInterfaceEvents(pod, rec, results)
	}
	if rec.read && rec.PodUID != "" {
		if err := c.savePlan(rec); err != nil {
			return nil, p.undo(c, cn, rec, len(rec.Attachments)-1, fmt.Errorf("evelet-cni: pod %s/%s: keeping its networks for an outage: %w", rec.PodNamespace, rec.PodName, err))
		}
	}
	res := results[0]
	if c.CNIVersion != "" {
		if res, err = res.GetAsVersion(c.CNIVersion); err != nil {
			return nil, p.undo(c, cn, rec, len(rec.Attachments)-1, fmt.Errorf("evelet-cni: default network result: %w", err))
		}
	}
	return res, nil
}

// addedInterfaceEvents records, as multus does, one AddedInterface event
// per attached network ("Add net1 [10.1.1.5/24] from ns/nad"), so `kubectl
// describe pod` shows what each network gave the pod. An event that cannot
// be written is logged: the pod's networks are already in place.
func (p *Plugin) addedInterfaceEvents(pod *annotateTarget, rec *record, results []types.Result) {
	if pod.events == nil {
		return
	}
	for i, a := range rec.Attachments {
		if i >= len(results) || results[i] == nil {
			continue
		}
		msg := addedInterfaceMessage(a.IfName, a.Ref, results[i])
		ctx, cancel := p.apiCtx()
		err := pod.events.PodEvent(ctx, pod.namespace, pod.name, rec.PodUID, "AddedInterface", msg)
		cancel()
		if err != nil {
			p.log().WithError(err).Warnf("pod %s/%s: recording AddedInterface event", pod.namespace, pod.name)
		}
	}
}

// addedInterfaceMessage is multus's AddedInterface text: the interface,
// its addresses in CIDR form and the network it came from.
func addedInterfaceMessage(ifName, ref string, res types.Result) string {
	var ips []string
	if r, err := types100.NewResultFromResult(res); err == nil {
		for _, ip := range r.IPs {
			ips = append(ips, ip.Address.String())
		}
	}
	return fmt.Sprintf("Add %s [%s] from %s", ifName, strings.Join(ips, ","), ref)
}

// applyDefaultRoute moves the pod's default route to attachment i, as its
// "default-route" asked, and records the gateways for CHECK.
func (p *Plugin) applyDefaultRoute(c *Conf, rec *record, i int, res types.Result) error {
	a := &rec.Attachments[i]
	what := fmt.Sprintf("network %d (%s, interface %s)", i, a.Ref, a.IfName)
	if rec.PodName != "" {
		what = fmt.Sprintf("pod %s/%s: %s", rec.PodNamespace, rec.PodName, what)
	}
	gws, err := defaultGateways(a, res)
	if err != nil {
		return fmt.Errorf("evelet-cni: %s: %w", what, err)
	}
	if err := setDefaultRoute(rec.NetNS, a.IfName, gws); err != nil {
		return fmt.Errorf("evelet-cni: %s: default route: %w", what, err)
	}
	a.DefaultRouteVia = nil
	for _, gw := range gws {
		a.DefaultRouteVia = append(a.DefaultRouteVia, gw.String())
	}
	if err := c.saveRecord(rec); err != nil {
		return fmt.Errorf("evelet-cni: attachment cache: %w", err)
	}
	return nil
}

// undo deletes attachments last..0 (in reverse) after a failed ADD.
func (p *Plugin) undo(c *Conf, cn *libcni.CNIConfig, rec *record, last int, cause error) error {
	if err := p.delete(c, cn, rec, last); err != nil {
		p.log().WithError(err).WithField("container", rec.ContainerID).Warn("undoing a failed ADD: a delegate's DEL failed")
		return fmt.Errorf("%w (and undoing it: %v)", cause, err)
	}
	return cause
}

// delete runs DEL for attachments last..0 and always drops the record.
//
// A sandbox must always be deletable: a delegate whose DEL fails on every
// try (a plugin that refuses the configuration it was given, say) would
// otherwise keep the record, and with it every other attachment, for
// ever. So when a conflist's DEL fails, its plugins are deleted one by one
// in reverse, each whatever the others did (eve-ni frees its own address,
// guard and links that way even when a plugin chained after it fails),
// and the record goes. The errors are returned; a runtime that retries
// the DEL finds no record and deletes the default network only.
func (p *Plugin) delete(c *Conf, cn *libcni.CNIConfig, rec *record, last int) error {
	var errs []error
	for i := last; i >= 0; i-- {
		a := &rec.Attachments[i]
		l, err := a.list()
		if err == nil {
			if err = cn.DelNetworkList(context.Background(), l, rtConf(rec, a)); err != nil {
				p.deleteEach(cn, l, rtConf(rec, a))
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s (interface %s): %w", a.Ref, a.IfName, err))
		}
	}
	if rec.PodUID != "" {
		c.touchPlan(rec.PodUID)
	}
	if err := c.removeRecord(rec.ContainerID, rec.IfName); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// deleteEach runs DEL of every plugin of l on its own, last first,
// whatever each returns: what libcni's DelNetworkList skipped after the
// first failure still gets its DEL.
func (p *Plugin) deleteEach(cn *libcni.CNIConfig, l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) {
	for j := len(l.Plugins) - 1; j >= 0; j-- {
		pl := l.Plugins[j]
		one := &libcni.NetworkConfigList{Name: l.Name, CNIVersion: l.CNIVersion, Plugins: []*libcni.PluginConfig{pl}}
		if err := cn.DelNetworkList(context.Background(), one, rt); err != nil {
			p.log().WithError(err).WithFields(logrus.Fields{"container": rt.ContainerID, "network": l.Name, "plugin": pl.Network.Type}).
				Warn("a delegate's DEL failed; evelet's record of the attachment goes anyway")
		}
	}
}

// Del is CNI DEL: from the record of ADD, so it needs no apiserver.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	c, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	cn := p.cni(c, args)
	rec, err := c.loadRecord(args.ContainerID, args.IfName)
	if err != nil {
		return fmt.Errorf("evelet-cni: %w", err)
	}
	if rec == nil {
		// Nothing recorded (ADD never ran, or DEL already did): DEL of the
		// default network is harmless and frees anything it holds.
		def, err := defaultNetwork(c)
		if errors.Is(err, fs.ErrNotExist) {
			// Nor is the default network's conflist there any more (the
			// node left, and the agent removed the one it wrote): nothing
			// of evelet-cni's is left to undo. Failing would make the
			// runtime's retried DEL fail for ever and its sandbox
			// unremovable.
			p.log().WithError(err).WithField("container", args.ContainerID).Info("DEL without a record or a default network: nothing to undo")
			return nil
		}
		if err != nil {
			return err
		}
		cniArgs, _, _ := parseArgs(args.Args)
		rec = &record{ContainerID: args.ContainerID, NetNS: args.Netns, IfName: args.IfName, Args: cniArgs,
			Attachments: []attachment{{Ref: def.Name, IfName: args.IfName, Config: def.Bytes, Default: true}}}
	}
	if args.Netns != "" {
		rec.NetNS = args.Netns // the runtime may have recreated the path
	} else {
		rec.NetNS = "" // netns already gone: delegates free addresses only
	}
	if err := p.delete(c, cn, rec, len(rec.Attachments)-1); err != nil {
		return fmt.Errorf("evelet-cni: DEL: %w", err)
	}
	return nil
}

// Check is CNI CHECK: every recorded attachment through its delegates.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	c, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	rec, err := c.loadRecord(args.ContainerID, args.IfName)
	if err != nil {
		return fmt.Errorf("evelet-cni: %w", err)
	}
	if rec == nil {
		return fmt.Errorf("evelet-cni: CHECK: no attachment recorded for container %s interface %s", args.ContainerID, args.IfName)
	}
	cn := p.cni(c, args)
	for i := range rec.Attachments {
		a := &rec.Attachments[i]
		l, err := a.list()
		if err == nil {
			err = cn.CheckNetworkList(context.Background(), l, rtConf(rec, a))
		}
		if err != nil {
			return fmt.Errorf("evelet-cni: CHECK %s (interface %s): %w", a.Ref, a.IfName, err)
		}
		if len(a.DefaultRouteVia) > 0 {
			if err := checkDefaultRoute(rec.NetNS, a.IfName, a.DefaultRouteVia); err != nil {
				return fmt.Errorf("evelet-cni: CHECK %s (interface %s): \"default-route\": %w", a.Ref, a.IfName, err)
			}
		}
	}
	return nil
}

// Status is CNI STATUS (1.1): ready when the default network is.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	c, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	def, err := defaultNetwork(c)
	if err != nil {
		return err
	}
	if err := p.cni(c, args).GetStatusNetworkList(context.Background(), def); err != nil {
		return fmt.Errorf("evelet-cni: STATUS of default network %s: %w", def.Name, err)
	}
	return nil
}

// GC is CNI GC (1.1): DEL every recorded sandbox the runtime no longer
// lists, then let libcni collect the default network's own leftovers.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	c, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	var gc struct {
		Valid []types.GCAttachment `json:"cni.dev/valid-attachments"`
	}
	if err := json.Unmarshal(args.StdinData, &gc); err != nil {
		return fmt.Errorf("evelet-cni: GC: %w", err)
	}
	valid := map[types.GCAttachment]bool{}
	for _, a := range gc.Valid {
		valid[a] = true
	}
	recs, err := c.records()
	if err != nil {
		return fmt.Errorf("evelet-cni: GC: %w", err)
	}
	cn := p.cni(c, args)
	var errs []error
	for _, r := range recs {
		if valid[types.GCAttachment{ContainerID: r.ContainerID, IfName: r.IfName}] {
			continue
		}
		r.NetNS = ""
		p.log().WithFields(logrus.Fields{"container": r.ContainerID, "pod": r.PodNamespace + "/" + r.PodName}).Info("GC: deleting the attachments of a sandbox the runtime no longer has")
		if err := p.delete(c, cn, r, len(r.Attachments)-1); err != nil {
			errs = append(errs, fmt.Errorf("container %s: %w", r.ContainerID, err))
		}
	}
	c.prunePlans(time.Now())
	if def, err := defaultNetwork(c); err != nil {
		errs = append(errs, err)
	} else if err := cn.GCNetworkList(context.Background(), def, &libcni.GCArgs{ValidAttachments: gc.Valid}); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("evelet-cni: GC: %w", errors.Join(errs...))
	}
	return nil
}

// networkStatus renders network-status from the results, in ADD order.
func networkStatus(rec *record, results []types.Result) (string, error) {
	var st []annotation.NetworkStatus
	claim := rec.claimIndex()
	for i, r := range results {
		a := &rec.Attachments[i]
		s := annotation.NetworkStatus{Name: a.Ref, Interface: a.IfName, Default: a.Default, DefaultRoute: a.DefaultRouteVia, Gateway: a.DefaultRouteVia}
		if r != nil {
			cur, err := types100.NewResultFromResult(r)
			if err != nil {
				return "", fmt.Errorf("result of %s: %w", a.Ref, err)
			}
			ifIndex := -1
			for j, in := range cur.Interfaces {
				if in.Name == a.IfName && in.Sandbox != "" {
					s.MAC, ifIndex = in.Mac, j
				}
			}
			var ipGW []net.IP
			for _, ip := range cur.IPs {
				if ip.Interface == nil || *ip.Interface == ifIndex || ifIndex < 0 {
					s.IPs = append(s.IPs, ip.Address.IP.String())
					if ip.Gateway != nil {
						ipGW = append(ipGW, ip.Gateway)
					}
				}
			}
			// "gateway" lists the gateways of the pod's default routes
			// through this interface only (multus): those ADD installed
			// for "default-route", else the result's own default routes
			// when no network of the pod moved them.
			if len(a.DefaultRouteVia) == 0 && claim < 0 {
				s.Gateway = resultDefaultGateways(cur, ipGW)
			}
			if d := cur.DNS; len(d.Nameservers)+len(d.Search)+len(d.Options) > 0 || d.Domain != "" {
				s.DNS = &annotation.DNS{Nameservers: d.Nameservers, Domain: d.Domain, Search: d.Search, Options: d.Options}
			}
		}
		st = append(st, s)
	}
	return annotation.RenderStatus(st)
}

// resultDefaultGateways returns the gateways of res's default routes; a
// default route without "gw" goes via its family's address gateway.
func resultDefaultGateways(res *types100.Result, ipGW []net.IP) []string {
	var out []string
	add := func(ip net.IP) {
		if ip != nil && !slices.Contains(out, ip.String()) {
			out = append(out, ip.String())
		}
	}
	for _, rt := range res.Routes {
		if ones, _ := rt.Dst.Mask.Size(); ones != 0 {
			continue
		}
		if rt.GW != nil {
			add(rt.GW)
			continue
		}
		v4 := rt.Dst.IP.To4() != nil
		for _, gw := range ipGW {
			if (gw.To4() != nil) == v4 {
				add(gw)
			}
		}
	}
	return out
}
