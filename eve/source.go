package eve

import (
	"context"
	"fmt"
	"os"
	"reflect"
	"syscall"
	"time"

	"github.com/lf-edge/evelet/bootstrap/intent"
	"github.com/lf-edge/evelet/eve/evecfg"
	"github.com/lf-edge/evelet/eve/pubsub"
	"github.com/sirupsen/logrus"
)

// Source is the agent's EVE channel: an intent.Source fed by zedagent's
// pubsub topics and the checkpointed config under Root.
type Source struct {
	Root pubsub.Root
	// ControllerCerts, if set, is the only directory searched for
	// controller certificates. Empty: where the running EVE publishes them
	// (ControllerCertDirs: <Run>/zedagent/ControllerCert since 16.12.0,
	// <Persist>/status/zedagent/ControllerCert before).
	ControllerCerts string
	// Poll is how often the checkpoint is re-read (it is not a pubsub topic).
	Poll time.Duration
	Log  *logrus.Entry
}

func (s *Source) Name() string { return "eve " + s.Root.Run + "," + s.Root.Persist }

func (s *Source) certDirs(rel Release) []string {
	if s.ControllerCerts != "" {
		return []string{s.ControllerCerts}
	}
	return ControllerCertDirs(s.Root, rel)
}

// Watch reports join intent whenever the EVE side changes it. The same
// intent twice is reported once; an error is reported once per distinct
// message, and the agent keeps its last good state meanwhile.
func (s *Source) Watch(ctx context.Context) <-chan intent.Update {
	out := make(chan intent.Update, 1)
	poll := s.Poll
	if poll == 0 {
		poll = 2 * time.Second
	}
	log := s.Log
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	snaps := pubsub.NewWatcher(s.Root, pubsub.WatchOptions{Log: log}).Watch(ctx)
	go func() {
		defer close(out)
		var (
			snap     pubsub.Snapshot
			haveSnap bool
			cpSig    = "unread"
			cp       *evecfg.Checkpoint
			cpErr    error
			last     *intent.Update
			tick     = time.NewTicker(poll)
		)
		defer tick.Stop()
		// The non-pubsub inputs (checkpoint and its .bak, device key,
		// controller certificates) are polled by file signature; the
		// checkpoint is re-parsed only when one of them changed.
		readCheckpoint := func() bool {
			sig := fileSig(s.Root.Checkpoint()) + "|" + fileSig(s.Root.Checkpoint()+".bak") + "|" +
				fileSig(s.Root.DeviceECDHKey()) + "|" + fileSig(s.Root.ControllerCertDir()) + "|" +
				fileSig(s.Root.ControllerCertDirPersistent()) + "|" + fileSig(s.ControllerCerts)
			if sig == cpSig {
				return false
			}
			cpSig = sig
			cp, cpErr = evecfg.LoadCheckpoint(s.Root.Checkpoint())
			if cpErr != nil {
				cp = nil
			}
			return true
		}
		readCheckpoint()
		for {
			select {
			case <-ctx.Done():
				return
			case sn, ok := <-snaps:
				if !ok {
					return
				}
				snap, haveSnap = sn, true
			case <-tick.C:
				if !readCheckpoint() {
					continue
				}
			}
			if !haveSnap {
				continue
			}
			u := s.update(snap, cp, cpErr)
			if last != nil && sameUpdate(*last, u) {
				continue
			}
			last = &u
			select {
			case out <- u:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

func (s *Source) update(snap pubsub.Snapshot, cp *evecfg.Checkpoint, cpErr error) intent.Update {
	r, err := Resolve(Inputs{Snapshot: snap, Checkpoint: cp, CheckpointErr: cpErr, DeviceKeyPath: s.Root.DeviceECDHKey(),
		ControllerCertDirs: s.certDirs(ReleaseOf(snap))})
	if err != nil {
		// The join does not resolve; the owner's items still apply.
		return intent.Update{Err: err, ConfigItems: ConfigItems(cp, cpErr)}
	}
	return intent.Update{Join: r.Join, ConfigItems: r.ConfigItems}
}

func sameUpdate(a, b intent.Update) bool {
	if (a.Err == nil) != (b.Err == nil) || (a.ConfigItems == nil) != (b.ConfigItems == nil) {
		return false
	}
	if a.Err != nil && a.Err.Error() != b.Err.Error() {
		return false
	}
	return reflect.DeepEqual(a.Join, b.Join) && reflect.DeepEqual(a.ConfigItems, b.ConfigItems)
}

// fileSig identifies a file's version without reading it: inode, size and
// modification time change on every rename-into-place.
func fileSig(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return "absent"
	}
	ino := uint64(0)
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		ino = sys.Ino
	}
	return fmt.Sprintf("%d/%d/%d", ino, st.Size(), st.ModTime().UnixNano())
}
