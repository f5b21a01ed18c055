package eveni

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func ip4(s string) net.IP { return net.ParseIP(s).To4() }

func none(net.IP) bool { return false }

func TestAllocateParallelNeverShares(t *testing.T) {
	a := Allocator{Dir: t.TempDir()}
	const n = 40
	got := make([]net.IP, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			got[i], errs[i] = a.Allocate(Owner{fmt.Sprintf("c%d", i), "net1"}, ip4("10.1.0.100"), ip4("10.1.0.199"), none, nil)
		}(i)
	}
	wg.Wait()
	seen := map[string]int{}
	for i := range got {
		if errs[i] != nil {
			t.Fatalf("allocation %d: %v", i, errs[i])
		}
		if j, dup := seen[got[i].String()]; dup {
			t.Fatalf("allocations %d and %d share %s", i, j, got[i])
		}
		seen[got[i].String()] = i
	}
}

func TestAllocateSurvivesReload(t *testing.T) {
	dir := t.TempDir()
	first, err := Allocator{Dir: dir}.Allocate(Owner{"a", "net1"}, ip4("10.1.0.10"), ip4("10.1.0.11"), none, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A "reboot": a new Allocator (as a new plugin process) on the same dir.
	again := Allocator{Dir: dir}
	same, err := again.Allocate(Owner{"a", "net1"}, ip4("10.1.0.10"), ip4("10.1.0.11"), none, nil)
	if err != nil || !same.Equal(first) {
		t.Fatalf("repeated ADD got %v (%v), want %s", same, err, first)
	}
	other, err := again.Allocate(Owner{"b", "net1"}, ip4("10.1.0.10"), ip4("10.1.0.11"), none, nil)
	if err != nil || other.Equal(first) {
		t.Fatalf("second owner got %v (%v); must differ from %s", other, err, first)
	}
	if _, err := again.Allocate(Owner{"c", "net1"}, ip4("10.1.0.10"), ip4("10.1.0.11"), none, nil); !errors.Is(err, ErrExhausted) {
		t.Fatalf("third owner in a range of two: %v, want exhausted", err)
	}
	if err := again.Release(Owner{"a", "net1"}); err != nil {
		t.Fatal(err)
	}
	if got, err := (Allocator{Dir: dir}).Allocate(Owner{"c", "net1"}, ip4("10.1.0.10"), ip4("10.1.0.11"), none, nil); err != nil || !got.Equal(first) {
		t.Fatalf("after release: %v %v, want %s", got, err, first)
	}
}

func TestAllocateSkipsExcludedAndHonoursRequest(t *testing.T) {
	a := Allocator{Dir: t.TempDir()}
	ex := func(ip net.IP) bool { return ip.Equal(ip4("10.1.0.10")) }
	got, err := a.Allocate(Owner{"a", "net1"}, ip4("10.1.0.10"), ip4("10.1.0.12"), ex, nil)
	if err != nil || !got.Equal(ip4("10.1.0.11")) {
		t.Fatalf("got %v %v, want 10.1.0.11 (10.1.0.10 excluded)", got, err)
	}
	if got, err = a.Allocate(Owner{"b", "net1"}, ip4("10.1.0.10"), ip4("10.1.0.12"), ex, ip4("10.1.0.12")); err != nil || !got.Equal(ip4("10.1.0.12")) {
		t.Fatalf("requested 10.1.0.12: %v %v", got, err)
	}
	for _, want := range []string{"10.1.0.12", "10.1.0.10", "10.1.0.13", "10.1.0.9"} {
		if _, err := a.Allocate(Owner{"c", "net1"}, ip4("10.1.0.10"), ip4("10.1.0.12"), ex, ip4(want)); err == nil {
			t.Errorf("request for %s (taken, excluded or outside) was granted", want)
		}
	}
}

func TestAllocatorGC(t *testing.T) {
	a := Allocator{Dir: t.TempDir()}
	for _, id := range []string{"keep", "gone1", "gone2"} {
		if _, err := a.Allocate(Owner{id, "net1"}, ip4("10.1.0.10"), ip4("10.1.0.20"), none, nil); err != nil {
			t.Fatal(err)
		}
	}
	freed, err := a.GC([]types.GCAttachment{{ContainerID: "keep", IfName: "net1"}})
	if err != nil || len(freed) != 2 {
		t.Fatalf("GC freed %v (%v), want two", freed, err)
	}
	if ip, _ := a.Lookup(Owner{"keep", "net1"}); ip == nil {
		t.Fatal("GC freed a valid attachment")
	}
	if ip, _ := a.Lookup(Owner{"gone1", "net1"}); ip != nil {
		t.Fatal("GC kept a stale attachment")
	}
}

func TestAllocatorRefusesCorruptState(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "allocations.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := (Allocator{Dir: dir}).Allocate(Owner{"a", "net1"}, ip4("10.1.0.10"), ip4("10.1.0.20"), none, nil); err == nil {
		t.Fatal("allocated over a corrupt state")
	}
}
