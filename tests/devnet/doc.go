// Package devnet runs several simulated EVE devices on one host, each a
// real evelet agent with its own kubelet and containerd in a network
// namespace of its own, joined over a bridge to one test control plane.
// It needs root, containerd, runc, the CNI plugins and nsenter.
//
// API:
//
//	net, err := devnet.NewNet(devnet.NetOptions{})  // bridge evdnet0, host 10.250.0.1/24
//	defer net.Close()
//	// the control plane listens on net.HostIP():
//	cp, err := controlplane.Start(ctx, controlplane.Options{..., AdvertiseAddress: net.HostIP(), BindAddress: net.HostIP()})
//	dev := net.NewDevice(t, 1, devnet.DeviceOptions{ControlPlane: cp, Evelet: bin, Images: tars}) // t.Cleanup closes it
//	err = dev.Start()                                   // containerd + agent in netns evdev-1; joins the cluster
//	node, err := dev.WaitReady(ctx, 3*time.Minute)      // Ready, InternalIP 10.250.0.11
//	err = dev.Reboot(devnet.RebootOptions{OSVersion: "16.13.0-kvm-amd64"})
//	upAt := time.Now() // the old boot is dead once Reboot returns
//	node, err = dev.WaitReadyAfter(ctx, upAt, 3*time.Minute) // Lease renewed after upAt, Ready
//	dev.EVE()       // the *evesim.Device: cluster intent, config items, releases
//	dev.NodeName()  // the node name evelet derives from the EVE name
//	dev.Stop(); dev.Start()                             // orderly shutdown (pods removed through the CRI) and boot
//	err = dev.Close()                                   // nothing of it left; dev.Leftovers() says otherwise
//	// another program in the agent's place (a stock kubelet, for comparisons):
//	net.NewDevice(t, 2, devnet.DeviceOptions{ControlPlane: cp, NoJoin: true, Command: func(c devnet.CommandContext) []string { ... }})
//	dev.AgentStartedAt()                                // when this boot's agent (or Command) started, containerd already up
//
// Device n (1..200) has, with the default prefix "evdev":
//
//   - network namespace evdev-<n> (/run/netns), eth0 = 10.250.0.(10+n)/24,
//     default route via 10.250.0.1, lo up; the host side of its veth,
//     evdev<n>h, is a port of the bridge. Kubelet ports (10250, 10248) and
//     the agent's metrics port are the defaults: each namespace has its own.
//   - a directory /tmp/evdev-<n>-*, split as EVE splits the disk:
//     persist/ (EVE's /persist: evesim's Persist, evelet's --state-dir
//     persist/evelet, containerd's root persist/containerd with content,
//     snapshots and metadata, its config and log) and run/ (EVE's /run, a
//     tmpfs: evesim's Run, evelet's --run-dir run/evelet, containerd's
//     state, runc root, socket and CNI IPAM data under run/containerd).
//   - its own containerd, started inside the namespace with nsenter --net
//     (only the network namespace: the kubelet's volume mounts live in the
//     host mount namespace, where containerd and runc must see them); its
//     pod network is a CNI bridge (cni0) inside the namespace over
//     10.244.(20+n).0/24, NATed to the device's address. With
//     DeviceOptions.EveletCNI it is evelet-cni instead, as on EVE: the
//     agent installs it into persist/cni-bin (the system plugins, linked)
//     and its conflist sorts first in containerd's CNI conf dir
//     (DeviceOptions.ConfigItems then choose, e.g., evelet.pod-network).
//   - its agent, `evelet agent` from the EVE channel (--eve-run,
//     --eve-persist) in the namespace, with --kubelet-cgroup-root=/evdev-<n>
//     (created in every cgroup hierarchy). The simulated controller gives
//     it the cluster: JoinServerIP 10.250.0.1, ClusterIPPrefix = the
//     device's address/24 (so that is the node IP), a bootstrap token, and
//     evelet.apiserver-url = the control plane's advertised URL.
//
// A Reboot is a power cycle. Every process of the device is SIGKILLed: the
// agent, its kubelet, containerd, the shims and the pods, found by the
// device's network namespace, its cgroup root and its containerd socket
// (never by name). Every mount under the device's directory goes, and so
// do the network namespace (CNI bridge, NAT rules; pod namespaces lose
// their last reference), the cgroups, and libcni's cache entries of the
// device's network. run/ is emptied, persist/ kept. EVE boots (another
// release with RebootOptions.OSVersion), zedagent publishes again from its
// checkpoint, and the device starts as Start does: the agent finds its
// credentials in persist and the kubelet its pods' state there.
//
// Stop is an orderly shutdown (SIGTERM to the agent, pods removed through
// the CRI); Close is Stop plus removing everything the device had on the
// host, its Node object and its directory, and runs from t.Cleanup so a
// failed test leaves nothing behind.
package devnet
