package kubeletshim

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
)

// Config items (EdgeDevConfig.configItems) the device owner sets for the
// kubelet; docs/kubelet.md. They take effect when the kubelet next starts.
const (
	ItemPrefix             = "evelet.kubelet."
	ItemSystemReserved     = ItemPrefix + "system-reserved"
	ItemKubeReserved       = ItemPrefix + "kube-reserved"
	ItemPodPidsLimit       = ItemPrefix + "pod-pids-limit"
	ItemServerTLSBootstrap = ItemPrefix + "server-tls-bootstrap"
)

// Defaults. EVE keeps its own services within dom0_mem=640M,max:800M and
// one vCPU (eve_max_vcpus=1) on its generic images (lf-edge/eve
// pkg/grub/rootfs.cfg, set_generic): that much is EVE's, not the tenant's.
// kube-reserved covers evelet itself: the agent, the kubelet and the shim.
var (
	DefaultSystemReserved = map[string]string{"cpu": "500m", "memory": "800Mi"}
	DefaultKubeReserved   = map[string]string{"cpu": "100m", "memory": "256Mi"}
)

// DefaultPodPidsLimit bounds the processes (threads) of one pod: a fork
// bomb stays inside its pod instead of exhausting the device's pid space.
const DefaultPodPidsLimit int64 = 1024

type kubeletItems struct {
	systemReserved, kubeReserved map[string]string
	podPidsLimit                 int64
	serverTLSBootstrap           bool
	errs                         []error
}

// kubeletItems reads the evelet.kubelet.* items; a bad one is reported
// and keeps its default.
func (o *Options) kubeletItems() kubeletItems {
	k := kubeletItems{
		systemReserved: copyMap(DefaultSystemReserved), kubeReserved: copyMap(DefaultKubeReserved),
		podPidsLimit: DefaultPodPidsLimit, serverTLSBootstrap: true,
	}
	keys := make([]string, 0, len(o.ConfigItems))
	for key := range o.ConfigItems {
		if strings.HasPrefix(key, ItemPrefix) {
			keys = append(keys, key)
		}
	}
	sort.Strings(keys)
	for _, key := range keys {
		v := strings.TrimSpace(o.ConfigItems[key])
		if v == "" {
			continue
		}
		var err error
		switch key {
		case ItemSystemReserved:
			err = parseReservation(v, &k.systemReserved)
		case ItemKubeReserved:
			err = parseReservation(v, &k.kubeReserved)
		case ItemPodPidsLimit:
			n, perr := strconv.ParseInt(v, 10, 64)
			if perr != nil || n < 64 {
				err = fmt.Errorf("want a whole number of at least 64")
			} else {
				k.podPidsLimit = n
			}
		case ItemServerTLSBootstrap:
			b, perr := strconv.ParseBool(v)
			if perr != nil {
				err = fmt.Errorf("want true or false")
			} else {
				k.serverTLSBootstrap = b
			}
		default:
			err = fmt.Errorf("unknown evelet kubelet key")
		}
		if err != nil {
			k.errs = append(k.errs, fmt.Errorf("config item %s=%q: %w; keeping the default", key, o.ConfigItems[key], err))
		}
	}
	return k
}

// ConfigItemErrors lists the evelet.kubelet.* items that were refused
// (each keeps its default), for the agent to log.
func (o *Options) ConfigItemErrors() []error { return o.kubeletItems().errs }

// parseReservation reads "cpu=500m,memory=1Gi": every resource the owner
// names replaces the default for it; the others keep theirs. All entries
// must be good or none applies.
func parseReservation(v string, dst *map[string]string) error {
	out := copyMap(*dst)
	for _, e := range strings.Split(v, ",") {
		name, q, ok := strings.Cut(strings.TrimSpace(e), "=")
		if !ok {
			return fmt.Errorf("entry %q: want resource=quantity", e)
		}
		switch name {
		case "cpu", "memory", "ephemeral-storage", "pid":
		default:
			return fmt.Errorf("entry %q: resource must be cpu, memory, ephemeral-storage or pid", e)
		}
		qty, err := resource.ParseQuantity(q)
		if err != nil || qty.Sign() < 0 {
			return fmt.Errorf("entry %q: %q is not a quantity", e, q)
		}
		out[name] = qty.String()
	}
	*dst = out
	return nil
}

func copyMap(m map[string]string) map[string]string {
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
