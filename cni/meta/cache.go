package meta

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"

	"github.com/lf-edge/evelet/internal/atomicfile"
)

// attachment is one delegate run, with everything DEL needs to undo it
// without asking the apiserver again.
type attachment struct {
	Ref            string         `json:"ref"` // "ns/name", or the default network's name
	IfName         string         `json:"ifname"`
	Config         []byte         `json:"config"` // the conflist as run
	CapabilityArgs map[string]any `json:"capabilityArgs,omitempty"`
	Default        bool           `json:"default,omitempty"`
	// ClaimsDefaultRoute: the pod's "default-route" named this network;
	// DefaultRouteGateways are the gateways it listed (empty: the
	// result's), DefaultRouteVia the ones ADD installed (for CHECK).
	ClaimsDefaultRoute   bool     `json:"claimsDefaultRoute,omitempty"`
	DefaultRouteGateways []string `json:"defaultRouteGateways,omitempty"`
	DefaultRouteVia      []string `json:"defaultRouteVia,omitempty"`
}

func (a *attachment) list() (*libcni.NetworkConfigList, error) {
	return libcni.ConfListFromBytes(a.Config)
}

// record is what ADD did for one sandbox. It is written before the first
// delegate runs, so a crash half way still leaves DEL the full list.
type record struct {
	ContainerID  string       `json:"containerID"`
	NetNS        string       `json:"netns"`
	IfName       string       `json:"ifname"`
	Args         [][2]string  `json:"args,omitempty"`
	PodNamespace string       `json:"podNamespace,omitempty"`
	PodName      string       `json:"podName,omitempty"`
	PodUID       string       `json:"podUID,omitempty"`
	Attachments  []attachment `json:"attachments"` // in ADD order; [0] is the default

	// read: ADD read the pod from the apiserver (so its plan is current);
	// planned: the apiserver did not answer and the pod's plan was used.
	read, planned bool
}

func (c *Conf) recordPath(containerID, ifname string) string {
	return filepath.Join(c.cacheDir(), containerID+"_"+ifname+".json")
}

func (c *Conf) saveRecord(r *record) error {
	if err := os.MkdirAll(c.cacheDir(), 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(c.recordPath(r.ContainerID, r.IfName), b, 0o600)
}

// loadRecord returns nil, nil when there is none.
func (c *Conf) loadRecord(containerID, ifname string) (*record, error) {
	b, err := os.ReadFile(c.recordPath(containerID, ifname))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	r := &record{}
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("attachment cache %s: %w", c.recordPath(containerID, ifname), err)
	}
	return r, nil
}

func (c *Conf) removeRecord(containerID, ifname string) error {
	err := os.Remove(c.recordPath(containerID, ifname))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// records lists every cached sandbox (for GC).
func (c *Conf) records() ([]*record, error) {
	entries, err := os.ReadDir(c.cacheDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*record
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(c.cacheDir(), e.Name()))
		if err != nil {
			return nil, err
		}
		r := &record{}
		if err := json.Unmarshal(b, r); err != nil {
			return nil, fmt.Errorf("attachment cache %s: %w", e.Name(), err)
		}
		out = append(out, r)
	}
	return out, nil
}
