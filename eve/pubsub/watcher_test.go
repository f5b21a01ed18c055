package pubsub

import (
	"context"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

func quietLog() logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return l
}

func startWatch(t *testing.T, r Root) <-chan Snapshot {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w := NewWatcher(r, WatchOptions{Debounce: 20 * time.Millisecond, Resync: time.Hour, Log: quietLog()})
	return w.Watch(ctx)
}

func next(t *testing.T, ch <-chan Snapshot) Snapshot {
	t.Helper()
	select {
	case s, ok := <-ch:
		if !ok {
			t.Fatal("channel closed")
		}
		return s
	case <-time.After(3 * time.Second):
		t.Fatal("no snapshot")
	}
	panic("unreachable")
}

// nextWhere skips snapshots until cond holds (a write may be seen in steps).
func nextWhere(t *testing.T, ch <-chan Snapshot, cond func(Snapshot) bool) Snapshot {
	t.Helper()
	deadline := time.After(3 * time.Second)
	for {
		select {
		case s, ok := <-ch:
			if !ok {
				t.Fatal("channel closed")
			}
			if cond(s) {
				return s
			}
		case <-deadline:
			t.Fatal("condition not reached")
		}
	}
}

func expectNone(t *testing.T, ch <-chan Snapshot, d time.Duration) {
	t.Helper()
	select {
	case s := <-ch:
		t.Fatalf("unexpected snapshot: %+v", s)
	case <-time.After(d):
	}
}

func clusterConfig(name string) EdgeNodeClusterConfig {
	return EdgeNodeClusterConfig{
		Initialized:  true,
		Valid:        true,
		ClusterName:  name,
		JoinServerIP: net.ParseIP("10.1.0.1"),
		ClusterIPPrefix: &net.IPNet{
			IP: net.ParseIP("10.1.0.5").To4(), Mask: net.CIDRMask(24, 32),
		},
	}
}

func mustWrite[T any](t *testing.T, path string, v T) {
	t.Helper()
	if err := Write(path, v); err != nil {
		t.Fatal(err)
	}
}

func TestWatcherInitialChangeIdenticalBad(t *testing.T) {
	r := testRoot(t)
	mustWrite(t, r.EdgeNodeClusterConfig(), clusterConfig("one"))
	mustWrite(t, r.NetworkInstanceStatus("ni1"), NetworkInstanceStatus{
		NetworkInstanceConfig: NetworkInstanceConfig{UUIDandVersion: UUIDandVersion{UUID: "ni1"}},
		NetworkInstanceInfo:   NetworkInstanceInfo{BridgeName: "bn1"},
	})
	mustWrite(t, r.ZbootStatus(PartitionIMGA), ZbootStatus{PartitionLabel: PartitionIMGA, PartitionState: PartitionStateActive})
	ch := startWatch(t, r)

	s := next(t, ch)
	if s.ClusterConfig == nil || s.ClusterConfig.ClusterName != "one" || s.NetworkInstances["ni1"].BridgeName != "bn1" ||
		s.Zboot[PartitionIMGA].PartitionState != PartitionStateActive || len(s.Errors) != 0 || s.NodeInfo != nil {
		t.Fatalf("initial snapshot: %+v", s)
	}

	// A change is delivered.
	mustWrite(t, r.EdgeNodeClusterConfig(), clusterConfig("two"))
	s = next(t, ch)
	if s.ClusterConfig.ClusterName != "two" || len(s.NetworkInstances) != 1 {
		t.Fatalf("after change: %+v", s)
	}

	// The same content again is not.
	mustWrite(t, r.EdgeNodeClusterConfig(), clusterConfig("two"))
	mustWrite(t, r.ZbootStatus(PartitionIMGA), ZbootStatus{PartitionLabel: PartitionIMGA, PartitionState: PartitionStateActive})
	expectNone(t, ch, 250*time.Millisecond)

	// A bad rewrite keeps the last good value and reports the file.
	if err := os.WriteFile(r.EdgeNodeClusterConfig(), []byte(`{"Valid":true,"ClusterName":"three","JoinServerIP":"nope"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	s = next(t, ch)
	if s.ClusterConfig == nil || s.ClusterConfig.ClusterName != "two" {
		t.Fatalf("last good not kept: %+v", s.ClusterConfig)
	}
	fileErr(t, s.Errors[r.EdgeNodeClusterConfig()], r.EdgeNodeClusterConfig(), "JoinServerIP")

	// Missing required field: same treatment.
	if err := os.WriteFile(r.EdgeNodeClusterConfig(), []byte(`{"Valid":true,"ClusterName":"three"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	s = next(t, ch)
	if s.ClusterConfig.ClusterName != "two" {
		t.Fatalf("last good not kept: %+v", s.ClusterConfig)
	}
	fileErr(t, s.Errors[r.EdgeNodeClusterConfig()], r.EdgeNodeClusterConfig(), "JoinServerIP")

	// Fixed: error gone, new value in.
	mustWrite(t, r.EdgeNodeClusterConfig(), clusterConfig("three"))
	s = next(t, ch)
	if s.ClusterConfig.ClusterName != "three" || len(s.Errors) != 0 {
		t.Fatalf("after fix: %+v %v", s.ClusterConfig, s.Errors)
	}

	// Unpublishing a per-key file removes it.
	if err := Unpublish(r.NetworkInstanceStatus("ni1")); err != nil {
		t.Fatal(err)
	}
	s = next(t, ch)
	if len(s.NetworkInstances) != 0 {
		t.Fatalf("NI not removed: %+v", s.NetworkInstances)
	}
}

func TestWatcherBadFileNeverGood(t *testing.T) {
	r := testRoot(t)
	if err := os.MkdirAll(r.BaseOsConfigDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.BaseOsConfig("c1"), []byte(`{"BaseOsVersion":`), 0o644); err != nil {
		t.Fatal(err)
	}
	s := next(t, startWatch(t, r))
	if len(s.BaseOsConfigs) != 0 {
		t.Fatalf("half-decoded value published: %+v", s.BaseOsConfigs)
	}
	if fe := fileErr(t, s.Errors[r.BaseOsConfig("c1")], r.BaseOsConfig("c1"), ""); fe.Offset != 17 {
		t.Fatalf("offset %d", fe.Offset)
	}
}

func TestWatcherPicksUpDirectoriesCreatedLater(t *testing.T) {
	r := testRoot(t) // neither run/ nor persist/ exists yet
	ch := startWatch(t, r)
	s := next(t, ch)
	if s.ClusterConfig != nil || len(s.DrainRequests) != 0 || len(s.Errors) != 0 {
		t.Fatalf("initial: %+v", s)
	}

	at := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	mustWrite(t, r.NodeDrainRequest(AgentBaseOsMgr), NodeDrainRequest{RequestedAt: at, RequestedBy: DrainRequesterUpdate, Context: "14.5.2"})
	s = nextWhere(t, ch, func(s Snapshot) bool { return len(s.DrainRequests) > 0 })
	if got := s.DrainRequests[AgentBaseOsMgr]; got.RequestedBy != DrainRequesterUpdate || !got.RequestedAt.Equal(at) {
		t.Fatalf("drain request: %+v", s.DrainRequests)
	}

	// A sibling tree under an existing parent, and a persistent-only topic.
	mustWrite(t, r.NodeAgentStatus(), NodeAgentStatus{Name: KeyNodeAgent, DeviceReboot: true})
	mustWrite(t, r.EdgeNodeInfoPersistent(), EdgeNodeInfo{DeviceName: "d", DeviceID: "6ba7b810-9dad-11d1-80b4-00c04fd430c8"})
	s = nextWhere(t, ch, func(s Snapshot) bool { return s.NodeAgent != nil && s.NodeInfoPersistent != nil })
	if !s.NodeAgent.DeviceReboot || s.NodeInfoPersistent.DeviceName != "d" || s.NodeInfo != nil {
		t.Fatalf("%+v %+v %+v", s.NodeAgent, s.NodeInfoPersistent, s.NodeInfo)
	}

	// The /run copy is reported on its own; the persistent one stays as it is.
	mustWrite(t, r.EdgeNodeInfo(), EdgeNodeInfo{DeviceName: "run", DeviceID: "6ba7b810-9dad-11d1-80b4-00c04fd430c8"})
	s = nextWhere(t, ch, func(s Snapshot) bool { return s.NodeInfo != nil && s.NodeInfo.DeviceName == "run" })
	if s.NodeInfoPersistent == nil || s.NodeInfoPersistent.DeviceName != "d" {
		t.Fatalf("persistent copy: %+v", s.NodeInfoPersistent)
	}

	// A topic directory removed and created again is still followed.
	if err := os.RemoveAll(r.TopicDir(AgentBaseOsMgr, TopicNodeDrainRequest)); err != nil {
		t.Fatal(err)
	}
	nextWhere(t, ch, func(s Snapshot) bool { return len(s.DrainRequests) == 0 })
	mustWrite(t, r.NodeDrainRequest(AgentBaseOsMgr), NodeDrainRequest{RequestedAt: at, RequestedBy: DrainRequesterDeviceOp})
	nextWhere(t, ch, func(s Snapshot) bool {
		return s.DrainRequests[AgentBaseOsMgr].RequestedBy == DrainRequesterDeviceOp
	})
}

func TestWatcherResyncWithoutNotifications(t *testing.T) {
	r := testRoot(t)
	mustWrite(t, r.NodeAgentStatus(), NodeAgentStatus{Name: KeyNodeAgent})
	sc := newScanner(r)
	if s := sc.scan(); s.NodeAgent == nil || s.NodeAgent.DeviceReboot {
		t.Fatalf("%+v", s.NodeAgent)
	}
	// The scanner alone (what the periodic resync runs) sees changes.
	mustWrite(t, r.NodeAgentStatus(), NodeAgentStatus{Name: KeyNodeAgent, DeviceReboot: true})
	if s := sc.scan(); !s.NodeAgent.DeviceReboot {
		t.Fatal("resync scan missed the change")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := NewWatcher(r, WatchOptions{Debounce: time.Hour, Resync: 30 * time.Millisecond, Log: quietLog()})
	ch := w.Watch(ctx)
	next(t, ch)
	mustWrite(t, r.NodeAgentStatus(), NodeAgentStatus{Name: KeyNodeAgent, AllDomainsHalted: true})
	s := next(t, ch) // debounce never fires within the test: only the resync can deliver
	if !s.NodeAgent.AllDomainsHalted {
		t.Fatalf("%+v", s.NodeAgent)
	}
}

func TestWatcherClosesOnCancel(t *testing.T) {
	r := testRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	ch := NewWatcher(r, WatchOptions{Log: quietLog()}).Watch(ctx)
	next(t, ch)
	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("snapshot after cancel")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("channel not closed")
	}
}

func TestReadSnapshot(t *testing.T) {
	r := testRoot(t)
	mustWrite(t, r.EdgeNodeClusterConfigPersistent(), clusterConfig("persisted"))
	mustWrite(t, r.BaseOsStatus("c1"), BaseOsStatus{ContentTreeUUID: "c1", PartitionState: PartitionStateUpdating})
	if err := os.WriteFile(r.EVERelease(), []byte("16.12.0-kvm-amd64\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := ReadSnapshot(r)
	if s.ClusterConfig != nil || s.ClusterConfigPersistent == nil || s.ClusterConfigPersistent.ClusterName != "persisted" ||
		s.BaseOsStatuses["c1"].PartitionState != PartitionStateUpdating || s.EVERelease != "16.12.0-kvm-amd64" {
		t.Fatalf("%+v", s)
	}
}
