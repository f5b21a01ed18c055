package claimspec

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParseDeviceIDRefusesWhatCouldLeadOut(t *testing.T) {
	uid, dev, err := ParseDeviceID("eve.lf-edge.org/claim=0b4d0c2e-7a35-4f0e-a1b2-111111111111_com1")
	if err != nil || uid != "0b4d0c2e-7a35-4f0e-a1b2-111111111111" || dev != "com1" {
		t.Fatal(uid, dev, err)
	}
	for _, bad := range []string{
		"eve.lf-edge.org/claim=../../etc/passwd_x",
		"eve.lf-edge.org/claim=..",
		"eve.lf-edge.org/claim=_com1",
		"eve.lf-edge.org/claim=abc",
		"eve.lf-edge.org/other=abc_com1",
		"vendor.com/claim=abc_com1",
		"eve.lf-edge.org/claim=abc_",
		"eve.lf-edge.org/claim=a.b_com1",
	} {
		if _, _, err := ParseDeviceID(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestWriteReadRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cdi")
	c := Claim{UID: "u1", Namespace: "ns", Name: "c", Pods: []Pod{{UID: "p", Namespace: "ns", Name: "pod"}},
		Devices: []Device{{Device: "com1", Adapter: "COM1", Class: "serial", Nodes: []string{"/dev/ttyS0"}, Env: []string{"A=b"}},
			{Device: "eth1", Adapter: "eth1", Class: "net", PCI: "0000:03:00.0", Env: []string{"PCI=0000:03:00.0"}}}}
	if err := Write(dir, c); err != nil {
		t.Fatal(err)
	}
	got, err := Read(dir, "u1")
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := got.Device("com1"); !ok || d.Nodes[0] != "/dev/ttyS0" || d.Env[0] != "A=b" || !got.HasPod("p") || got.Name != "c" {
		t.Fatalf("%+v", got)
	}
	if d, _ := got.Device("eth1"); d.PCI != "0000:03:00.0" {
		t.Fatalf("%+v", d)
	}
	all, err := List(dir)
	if err != nil || len(all) != 1 {
		t.Fatal(all, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "eve.lf-edge.org-claim_u1.json" {
		t.Fatalf("files %v", ents)
	}
}
