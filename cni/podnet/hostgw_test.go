package podnet

import (
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func hgNode(name string, ips []string, cidrs ...string) corev1.Node {
	n := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: cidrs}}
	for _, ip := range ips {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: name})
	return n
}

func TestHostGWRoutes(t *testing.T) {
	onLink := prefixes(t, "10.250.0.0/24", "fd00:250::/64")
	own := prefixes(t, "10.244.21.0/24")
	nodes := []corev1.Node{
		hgNode("dev1", []string{"10.250.0.11"}, "10.244.21.0/24"), // the device itself
		hgNode("dev2", []string{"10.250.0.12", "fd00:250::12"}, "10.244.22.0/24", "fd00:244:22::/64"),
		hgNode("cloud", []string{"192.168.7.4"}, "10.244.1.0/24"),     // another subnet: no host-gw
		hgNode("dup", []string{"10.250.0.13"}, "10.244.21.0/25"),      // overlaps the device's own
		hgNode("v6only", []string{"10.250.0.14"}, "fd00:244:24::/64"), // no IPv6 InternalIP on the link
		hgNode("nocidr", []string{"10.250.0.15"}),
		{ObjectMeta: metav1.ObjectMeta{Name: "bad"}, Spec: corev1.NodeSpec{PodCIDRs: []string{"x"}}},
	}
	got := HostGWRoutes("dev1", own, onLink, nodes)
	want := []HostGWRoute{
		{Dst: netip.MustParsePrefix("10.244.22.0/24"), Via: netip.MustParseAddr("10.250.0.12"), Node: "dev2"},
		{Dst: netip.MustParsePrefix("fd00:244:22::/64"), Via: netip.MustParseAddr("fd00:250::12"), Node: "dev2"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("routes %+v\nwant %+v", got, want)
	}
}
