package eveni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/lf-edge/evelet/internal/atomicfile"
	"golang.org/x/sys/unix"
)

// Allocator hands out the addresses of one Local NI's reserved range. Its
// state is one JSON file in Dir (under the state root, so it survives a
// reboot), changed only under an exclusive flock of Dir/lock and replaced
// atomically: parallel plugin processes never give one address twice, and
// a crash leaves the old or the new state, never half of one.
type Allocator struct {
	Dir string
}

// Owner is the attachment an address belongs to.
type Owner struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

type allocState struct {
	// Last is the address handed out last; the next search starts after
	// it, so a just-released address is not reused at once.
	Last net.IP `json:"last,omitempty"`
	// IPs maps an address to its owner.
	IPs map[string]Owner `json:"ips"`
	// MACs maps a pod interface's MAC to its owner: no two pods on one NI
	// share a MAC (the anti-spoofing guard holds each to its own).
	MACs map[string]Owner `json:"macs,omitempty"`
}

// ErrExhausted means every address of the range is taken.
var ErrExhausted = errors.New("reserved range exhausted")

func (a Allocator) file() string { return filepath.Join(a.Dir, "allocations.json") }

// locked runs fn on the state under the lock and saves it if fn says so.
func (a Allocator) locked(fn func(s *allocState) (save bool, err error)) error {
	if err := os.MkdirAll(a.Dir, 0o700); err != nil {
		return err
	}
	lf, err := os.OpenFile(filepath.Join(a.Dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("locking %s: %w", a.Dir, err)
	}
	defer unix.Flock(int(lf.Fd()), unix.LOCK_UN) //nolint:errcheck // closing releases it too
	s := allocState{IPs: map[string]Owner{}, MACs: map[string]Owner{}}
	b, err := os.ReadFile(a.file())
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &s); err != nil {
			// Never start over from an unreadable state: that could
			// hand out addresses pods still hold.
			return fmt.Errorf("allocation state %s is corrupt (fix or remove it by hand): %w", a.file(), err)
		}
		if s.IPs == nil {
			s.IPs = map[string]Owner{}
		}
		if s.MACs == nil {
			s.MACs = map[string]Owner{}
		}
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	save, err := fn(&s)
	if err != nil || !save {
		return err
	}
	b, err = json.MarshalIndent(s, "", " ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(a.file(), b, 0o600)
}

// Allocate gives o an address in start..end that excluded does not refuse:
// the one o already holds (a repeated ADD), else want if set (it must be
// in the range and free), else the next free one.
func (a Allocator) Allocate(o Owner, start, end net.IP, excluded func(net.IP) bool, want net.IP) (net.IP, error) {
	var got net.IP
	err := a.locked(func(s *allocState) (bool, error) {
		for ip, owner := range s.IPs {
			if owner == o {
				got = net.ParseIP(ip).To4()
				return false, nil
			}
		}
		lo, hi := u32(start), u32(end)
		if want != nil {
			if err := CheckRequested(want, start, end, excluded); err != nil {
				return false, err
			}
			if owner, taken := s.IPs[want.String()]; taken {
				return false, fmt.Errorf("requested address %s is taken by container %.12s (%s)", want, owner.ContainerID, owner.IfName)
			}
			got = want.To4()
		} else {
			next := lo
			if s.Last != nil && u32(s.Last) >= lo && u32(s.Last) < hi {
				next = u32(s.Last) + 1
			}
			for n := uint64(0); n <= uint64(hi-lo); n++ {
				ip := fromU32(next)
				if _, taken := s.IPs[ip.String()]; !taken && !excluded(ip) {
					got = ip
					break
				}
				if next == hi {
					next = lo
				} else {
					next++
				}
			}
			if got == nil {
				return false, fmt.Errorf("%w: all of %s-%s are in use", ErrExhausted, start, end)
			}
		}
		s.IPs[got.String()] = o
		s.Last = got
		return true, nil
	})
	return got, err
}

// ClaimMAC records mac as o's on this NI, refusing a MAC another
// attachment holds.
func (a Allocator) ClaimMAC(o Owner, mac net.HardwareAddr) error {
	return a.locked(func(s *allocState) (bool, error) {
		k := mac.String()
		if owner, taken := s.MACs[k]; taken && owner != o {
			return false, fmt.Errorf("MAC %s is taken by another pod's interface (container %.12s, %s)", k, owner.ContainerID, owner.IfName)
		}
		s.MACs[k] = o
		return true, nil
	})
}

// CheckRequested refuses a requested address outside start..end or one
// that excluded refuses (Allocate's rule, also checked before anything
// is attached).
func CheckRequested(want, start, end net.IP, excluded func(net.IP) bool) error {
	switch {
	case want.To4() == nil || u32(want) < u32(start) || u32(want) > u32(end):
		return fmt.Errorf("requested address %s is outside the range %s-%s the device owner reserved", want, start, end)
	case excluded(want):
		return fmt.Errorf("requested address %s is the gateway, the bridge, or used by EVE", want)
	}
	return nil
}

// Lookup returns o's address, nil if it holds none.
func (a Allocator) Lookup(o Owner) (net.IP, error) {
	var got net.IP
	err := a.locked(func(s *allocState) (bool, error) {
		for ip, owner := range s.IPs {
			if owner == o {
				got = net.ParseIP(ip).To4()
			}
		}
		return false, nil
	})
	return got, err
}

// Release frees o's address; releasing nothing is not an error.
func (a Allocator) Release(o Owner) error {
	if _, err := os.Stat(a.Dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return a.locked(func(s *allocState) (bool, error) {
		save := false
		for ip, owner := range s.IPs {
			if owner == o {
				delete(s.IPs, ip)
				save = true
			}
		}
		for mac, owner := range s.MACs {
			if owner == o {
				delete(s.MACs, mac)
				save = true
			}
		}
		return save, nil
	})
}

// GC frees every address whose owner is not in valid (CNI GC's
// cni.dev/valid-attachments) and returns the freed addresses, sorted.
func (a Allocator) GC(valid []types.GCAttachment) ([]string, error) {
	keep := map[Owner]bool{}
	for _, v := range valid {
		keep[Owner{ContainerID: v.ContainerID, IfName: v.IfName}] = true
	}
	var freed []string
	err := a.locked(func(s *allocState) (bool, error) {
		save := false
		for ip, owner := range s.IPs {
			if !keep[owner] {
				delete(s.IPs, ip)
				freed = append(freed, ip)
			}
		}
		for mac, owner := range s.MACs {
			if !keep[owner] {
				delete(s.MACs, mac)
				save = true
			}
		}
		return save || len(freed) > 0, nil
	})
	sort.Strings(freed)
	return freed, err
}

// allocators returns one Allocator per NI directory under stateDir (an NI
// may be gone from EVE while pods still hold addresses on it).
func allocators(stateDir string) ([]Allocator, error) {
	ents, err := os.ReadDir(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Allocator
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, Allocator{Dir: filepath.Join(stateDir, e.Name())})
		}
	}
	return out, nil
}
