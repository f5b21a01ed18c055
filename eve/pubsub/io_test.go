package pubsub

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func testRoot(t *testing.T) Root {
	d := t.TempDir()
	return Root{Run: filepath.Join(d, "run"), Persist: filepath.Join(d, "persist")}
}

func TestPaths(t *testing.T) {
	r := DeviceRoot
	for got, want := range map[string]string{
		r.EdgeNodeClusterConfig():           "/run/zedagent/EdgeNodeClusterConfig/global.json",
		r.EdgeNodeClusterConfigPersistent(): "/persist/status/zedagent/EdgeNodeClusterConfig/global.json",
		r.EdgeNodeClusterStatus():           "/run/zedkube/EdgeNodeClusterStatus/global.json",
		r.EdgeNodeInfo():                    "/run/zedagent/EdgeNodeInfo/global.json",
		r.EdgeNodeInfoPersistent():          "/persist/status/zedagent/EdgeNodeInfo/global.json",
		r.NetworkInstanceStatus("u1"):       "/run/zedrouter/NetworkInstanceStatus/u1.json",
		r.BaseOsConfig("c1"):                "/run/zedagent/BaseOsConfig/c1.json",
		r.BaseOsStatus("c1"):                "/run/baseosmgr/BaseOsStatus/c1.json",
		r.ZbootStatus(PartitionIMGB):        "/run/baseosmgr/ZbootStatus/IMGB.json",
		r.NodeAgentStatus():                 "/run/nodeagent/NodeAgentStatus/nodeagent.json",
		r.NodeDrainRequest(AgentBaseOsMgr):  "/run/baseosmgr/NodeDrainRequest/global.json",
		r.NodeDrainRequest(AgentZedAgent):   "/run/zedagent/NodeDrainRequest/global.json",
		r.NodeDrainStatus():                 "/run/zedkube/NodeDrainStatus/global.json",
		r.Checkpoint():                      "/persist/checkpoint/lastconfig",
		r.DeviceECDHKey():                   "/persist/certs/ecdh.key.pem",
	} {
		if got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	}
}

func TestReadMissingAndPresent(t *testing.T) {
	r := testRoot(t)
	if _, ok, err := Read[EdgeNodeInfo](r.EdgeNodeInfo()); ok || err != nil {
		t.Fatalf("missing file: ok=%v err=%v", ok, err)
	}
	want := EdgeNodeInfo{DeviceName: "d", DeviceID: "6ba7b810-9dad-11d1-80b4-00c04fd430c8"}
	if err := Write(r.EdgeNodeInfoPersistent(), want); err != nil {
		t.Fatal(err)
	}
	got, used, err := ReadFirst[EdgeNodeInfo](r.EdgeNodeInfo(), r.EdgeNodeInfoPersistent())
	if err != nil || used != r.EdgeNodeInfoPersistent() || got != want {
		t.Fatalf("fallback: %+v %s %v", got, used, err)
	}
	if err := os.WriteFile(r.EdgeNodeInfoPersistent(), []byte(`{"DeviceID":"nope"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, ok, err := Read[EdgeNodeInfo](r.EdgeNodeInfoPersistent())
	if !ok {
		t.Fatal("exists should be true")
	}
	fileErr(t, err, r.EdgeNodeInfoPersistent(), "DeviceID")
}

func TestReadAllSkipsTempFilesAndReportsBadOnes(t *testing.T) {
	r := testRoot(t)
	dir := r.ZbootStatusDir()
	if m, err := ReadAll[ZbootStatus](dir); err != nil || len(m) != 0 {
		t.Fatalf("missing dir: %v %v", m, err)
	}
	if err := Write(r.ZbootStatus(PartitionIMGA), ZbootStatus{PartitionLabel: "IMGA", PartitionState: "active"}); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{
		"IMGB.json":          `{"PartitionLabel":`,
		".IMGA.json.tmp-123": `junk`,
		"tmp4711":            `junk`,
		"restarted":          ``,
		".hidden.json":       `junk`,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m, err := ReadAll[ZbootStatus](dir)
	if len(m) != 1 || m[PartitionIMGA].PartitionState != "active" {
		t.Fatalf("map: %+v", m)
	}
	fileErr(t, err, r.ZbootStatus(PartitionIMGB), "")
}

func TestWriteShape(t *testing.T) {
	r := testRoot(t)
	if err := Write(r.NodeDrainStatus(), NodeDrainStatus{Status: DrainStatusCordoned, RequestedBy: DrainRequesterUpdate}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(r.NodeDrainStatus())
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"Status":5,"RequestedBy":3}` {
		t.Fatalf("wrote %s", b)
	}
	if st, err := os.Stat(r.NodeDrainStatus()); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600 as EVE's files", st.Mode().Perm(), err)
	}
	ents, _ := os.ReadDir(filepath.Dir(r.NodeDrainStatus()))
	if len(ents) != 1 {
		t.Fatalf("temp files left: %v", ents)
	}
	if err := Unpublish(r.NodeDrainStatus()); err != nil {
		t.Fatal(err)
	}
	if err := Unpublish(r.NodeDrainStatus()); err != nil {
		t.Fatalf("second unpublish: %v", err)
	}
	if _, err := os.Stat(r.NodeDrainStatus()); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("still there")
	}
}
