package podnet

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/lf-edge/evelet/cni/nad"
)

func prefixes(t *testing.T, s ...string) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

func TestFromConfigItems(t *testing.T) {
	for _, tc := range []struct {
		name    string
		items   map[string]string
		want    Settings
		wantErr string
	}{
		{"unset", nil, Settings{Mode: ModeConflist}, ""},
		{"podcidr", map[string]string{ItemMode: "podcidr"}, Settings{Mode: ModePodCIDR}, ""},
		{"conflist", map[string]string{ItemMode: " conflist "}, Settings{Mode: ModeConflist}, ""},
		{"unknown mode refused", map[string]string{ItemMode: "flannel"}, Settings{Mode: ModeConflist}, `evelet.pod-network="flannel" refused`},
		{"cluster cidrs", map[string]string{ItemMode: "podcidr", ItemClusterCIDR: "10.244.0.0/16, fd00:10:244::/56"},
			Settings{Mode: ModePodCIDR, ClusterCIDRs: prefixes(t, "10.244.0.0/16", "fd00:10:244::/56")}, ""},
		{"host bits refused", map[string]string{ItemClusterCIDR: "10.244.1.0/16"}, Settings{Mode: ModeConflist}, "host bits set (the network is 10.244.0.0/16)"},
		{"garbage refused whole", map[string]string{ItemClusterCIDR: "10.244.0.0/16,nope"}, Settings{Mode: ModeConflist}, `evelet.pod-network.cluster-cidr="10.244.0.0/16,nope" refused`},
		{"host-gw", map[string]string{ItemMode: "podcidr", ItemHostGW: "true"}, Settings{Mode: ModePodCIDR, HostGW: true}, ""},
		{"host-gw refused", map[string]string{ItemHostGW: "yes"}, Settings{Mode: ModeConflist}, `evelet.pod-network.host-gw="yes" refused`},
		{"empty list is unset", map[string]string{ItemClusterCIDR: " "}, Settings{Mode: ModeConflist}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, errs := FromConfigItems(tc.items)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("settings %+v, want %+v", got, tc.want)
			}
			switch {
			case tc.wantErr == "" && len(errs) > 0:
				t.Errorf("errors %v", errs)
			case tc.wantErr != "" && (len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.wantErr)):
				t.Errorf("errors %v, want one containing %q", errs, tc.wantErr)
			}
		})
	}
}

func TestPodCIDRs(t *testing.T) {
	node := func(single string, list ...string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "dev1"}, Spec: corev1.NodeSpec{PodCIDR: single, PodCIDRs: list}}
	}
	for _, tc := range []struct {
		name    string
		n       *corev1.Node
		want    []netip.Prefix
		wantErr string
	}{
		{"none", node(""), nil, ""},
		{"podCIDRs", node("10.244.21.0/24", "10.244.21.0/24"), prefixes(t, "10.244.21.0/24"), ""},
		{"only the old field", node("10.244.22.0/24"), prefixes(t, "10.244.22.0/24"), ""},
		{"dual stack", node("10.244.21.0/24", "10.244.21.0/24", "fd00:10:244:15::/64"), prefixes(t, "10.244.21.0/24", "fd00:10:244:15::/64"), ""},
		{"two of one family", node("", "10.244.21.0/24", "10.244.22.0/24"), nil, "want one per family"},
		{"bad", node("", "10.244.21.0"), nil, "node dev1: podCIDRs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PodCIDRs(tc.n)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
			if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("err %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// conflistJSON is the part of the conflist the tests look at.
type conflistJSON struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Plugins    []struct {
		Type        string          `json:"type"`
		Bridge      string          `json:"bridge"`
		IsGateway   bool            `json:"isGateway"`
		IPMasq      *bool           `json:"ipMasq"`
		Capabilites map[string]bool `json:"capabilities"`
		IPAM        struct {
			Type    string                `json:"type"`
			Ranges  [][]map[string]string `json:"ranges"`
			Routes  []map[string]string   `json:"routes"`
			DataDir string                `json:"dataDir"`
		} `json:"ipam"`
	} `json:"plugins"`
}

func TestConflist(t *testing.T) {
	dir := t.TempDir()
	n := Network{PodCIDRs: prefixes(t, "10.244.21.0/24", "fd00:10:244:15::/64"), IPAMDir: "/persist/evelet/cni/podnet-ipam"}
	path, err := n.WriteConflist(dir)
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(dir, "evelet-podcidr.conflist") {
		t.Errorf("path %s", path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// What the runtime and evelet-cni do with it: libcni loads it by name.
	cl, err := libcni.ConfListFromBytes(raw)
	if err != nil {
		t.Fatalf("libcni refuses the conflist: %v\n%s", err, raw)
	}
	// What evelet-cni does with its delegate: found by name, parsed.
	byName, err := nad.FromConfDir(dir, NetworkName)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nad.Parse(byName); err != nil {
		t.Fatalf("evelet-cni refuses the conflist: %v", err)
	}
	if cl.Name != NetworkName || len(cl.Plugins) != 2 || cl.Plugins[0].Network.Type != "bridge" || cl.Plugins[1].Network.Type != "portmap" {
		t.Fatalf("conflist %s", raw)
	}
	var c conflistJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	br := c.Plugins[0]
	if br.Bridge != "evelet-pod0" || !br.IsGateway || br.IPMasq == nil || *br.IPMasq {
		t.Errorf("bridge %+v: want evelet-pod0, gateway, ipMasq explicitly false", br)
	}
	wantRanges := [][]map[string]string{{{"subnet": "10.244.21.0/24"}}, {{"subnet": "fd00:10:244:15::/64"}}}
	wantRoutes := []map[string]string{{"dst": "0.0.0.0/0"}, {"dst": "::/0"}}
	if br.IPAM.Type != "host-local" || !reflect.DeepEqual(br.IPAM.Ranges, wantRanges) ||
		!reflect.DeepEqual(br.IPAM.Routes, wantRoutes) || br.IPAM.DataDir != n.IPAMDir {
		t.Errorf("ipam %+v", br.IPAM)
	}
	if !c.Plugins[1].Capabilites["portMappings"] {
		t.Errorf("portmap without portMappings: %s", raw)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v %v", st.Mode(), err)
	}
	if _, err := (Network{IPAMDir: "/x"}).Conflist(); err == nil {
		t.Error("a network without podCIDR rendered")
	}
	if _, err := (Network{PodCIDRs: n.PodCIDRs, IPAMDir: "rel"}).Conflist(); err == nil {
		t.Error("a relative IPAM dir rendered")
	}
}

func TestWaitPodCIDRs(t *testing.T) {
	ctx := context.Background()
	t.Run("set by the controller-manager after a while", func(t *testing.T) {
		c := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "dev1"}})
		var gets atomic.Int32
		c.PrependReactor("get", "nodes", func(a k8stesting.Action) (bool, runtime.Object, error) {
			if gets.Add(1) < 3 {
				return false, nil, nil // the Node as stored: no podCIDR yet
			}
			return true, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "dev1"}, Spec: corev1.NodeSpec{PodCIDRs: []string{"10.244.21.0/24"}}}, nil
		})
		got, err := WaitPodCIDRs(ctx, c, "dev1", time.Millisecond, 10*time.Second)
		if err != nil || !reflect.DeepEqual(got, prefixes(t, "10.244.21.0/24")) {
			t.Fatalf("got %v %v", got, err)
		}
	})
	t.Run("cluster without node IPAM", func(t *testing.T) {
		c := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "dev1"}})
		got, err := WaitPodCIDRs(ctx, c, "dev1", time.Millisecond, 50*time.Millisecond)
		if err != nil || got != nil {
			t.Fatalf("got %v %v, want none and no error", got, err)
		}
	})
	t.Run("node never registered", func(t *testing.T) {
		got, err := WaitPodCIDRs(ctx, fake.NewClientset(), "dev1", time.Millisecond, 50*time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), `node dev1: nodes "dev1" not found`) || got != nil {
			t.Fatalf("got %v %v", got, err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := WaitPodCIDRs(cctx, fake.NewClientset(), "dev1", time.Millisecond, time.Minute); err != context.Canceled {
			t.Fatalf("err %v", err)
		}
	})
}
