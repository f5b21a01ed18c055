package pubsub

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/sirupsen/logrus"
)

// Snapshot is the EVE side as evelet sees it at one moment. Pointers are nil
// and maps empty for topics that are not published. Per-key maps are keyed
// by the file's key (the NI or content-tree UUID, the partition label);
// DrainRequests is keyed by the publishing agent (AgentBaseOsMgr,
// AgentZedAgent). A snapshot is shared with the Watcher's later snapshots:
// treat it as read-only.
type Snapshot struct {
	// ClusterConfig and NodeInfo are the copies under <Run> (where EVE
	// 16.12.0 and later publish them); the ...Persistent fields are the
	// copies under <Persist>/status (where older releases published them,
	// and where they stay, stale, after an upgrade). The reader decides by
	// EVE version which one counts (eve).
	ClusterConfig           *EdgeNodeClusterConfig
	ClusterConfigPersistent *EdgeNodeClusterConfig
	ClusterStatus           *EdgeNodeClusterStatus
	NodeInfo                *EdgeNodeInfo
	NodeInfoPersistent      *EdgeNodeInfo
	NetworkInstances        map[string]NetworkInstanceStatus
	BaseOsConfigs           map[string]BaseOsConfig
	BaseOsStatuses          map[string]BaseOsStatus
	Zboot                   map[string]ZbootStatus
	NodeAgent               *NodeAgentStatus
	DrainRequests           map[string]NodeDrainRequest
	// EVERelease is the content of <Run>/eve-release, trimmed ("" when
	// absent). It is read on every scan but not watched: it is written
	// once, early at boot.
	EVERelease string
	// Errors holds, by file path, every file that exists but cannot be
	// used. Its topic keeps the last good value this Watcher saw, if any.
	Errors map[string]error `json:"-"`
}

// RunningVersion is the EVE version of the partition the device booted
// from (ZbootStatus with CurrentPartition), "" when baseosmgr has not
// published it.
func (s Snapshot) RunningVersion() string {
	for _, z := range s.Zboot {
		if z.CurrentPartition {
			return z.ShortVersion
		}
	}
	return ""
}

func newSnapshot() Snapshot {
	return Snapshot{
		NetworkInstances: map[string]NetworkInstanceStatus{},
		BaseOsConfigs:    map[string]BaseOsConfig{},
		BaseOsStatuses:   map[string]BaseOsStatus{},
		Zboot:            map[string]ZbootStatus{},
		DrainRequests:    map[string]NodeDrainRequest{},
		Errors:           map[string]error{},
	}
}

// fingerprint is what "changed" means: the decoded content plus the error
// texts. Maps marshal with sorted keys, so equal content gives equal bytes.
func (s Snapshot) fingerprint() []byte {
	errs := make(map[string]string, len(s.Errors))
	for p, e := range s.Errors {
		errs[p] = e.Error()
	}
	b, err := json.Marshal(struct {
		S Snapshot
		E map[string]string
	}{s, errs})
	if err != nil { // cannot happen for these types; never suppress a snapshot
		return []byte(time.Now().String())
	}
	return b
}

// topic describes one followed topic: either single files (candidates in
// priority order, the first existing one is used) or a per-key directory.
type topic struct {
	files  []string
	dir    string
	decode func(path string, data []byte) (any, error)
	set    func(s *Snapshot, key string, v any)
}

func decoder[T any]() func(string, []byte) (any, error) {
	return func(path string, data []byte) (any, error) { return Decode[T](path, data) }
}

func topics(r Root) []topic {
	ts := []topic{
		{
			files:  []string{r.EdgeNodeClusterConfig()},
			decode: decoder[EdgeNodeClusterConfig](),
			set:    func(s *Snapshot, _ string, v any) { c := v.(EdgeNodeClusterConfig); s.ClusterConfig = &c },
		},
		{
			files:  []string{r.EdgeNodeClusterConfigPersistent()},
			decode: decoder[EdgeNodeClusterConfig](),
			set:    func(s *Snapshot, _ string, v any) { c := v.(EdgeNodeClusterConfig); s.ClusterConfigPersistent = &c },
		},
		{
			files:  []string{r.EdgeNodeClusterStatus()},
			decode: decoder[EdgeNodeClusterStatus](),
			set:    func(s *Snapshot, _ string, v any) { c := v.(EdgeNodeClusterStatus); s.ClusterStatus = &c },
		},
		{
			files:  []string{r.EdgeNodeInfo()},
			decode: decoder[EdgeNodeInfo](),
			set:    func(s *Snapshot, _ string, v any) { c := v.(EdgeNodeInfo); s.NodeInfo = &c },
		},
		{
			files:  []string{r.EdgeNodeInfoPersistent()},
			decode: decoder[EdgeNodeInfo](),
			set:    func(s *Snapshot, _ string, v any) { c := v.(EdgeNodeInfo); s.NodeInfoPersistent = &c },
		},
		{
			dir:    r.NetworkInstanceStatusDir(),
			decode: decoder[NetworkInstanceStatus](),
			set:    func(s *Snapshot, k string, v any) { s.NetworkInstances[k] = v.(NetworkInstanceStatus) },
		},
		{
			dir:    r.BaseOsConfigDir(),
			decode: decoder[BaseOsConfig](),
			set:    func(s *Snapshot, k string, v any) { s.BaseOsConfigs[k] = v.(BaseOsConfig) },
		},
		{
			dir:    r.BaseOsStatusDir(),
			decode: decoder[BaseOsStatus](),
			set:    func(s *Snapshot, k string, v any) { s.BaseOsStatuses[k] = v.(BaseOsStatus) },
		},
		{
			dir:    r.ZbootStatusDir(),
			decode: decoder[ZbootStatus](),
			set:    func(s *Snapshot, k string, v any) { s.Zboot[k] = v.(ZbootStatus) },
		},
		{
			files:  []string{r.NodeAgentStatus()},
			decode: decoder[NodeAgentStatus](),
			set:    func(s *Snapshot, _ string, v any) { c := v.(NodeAgentStatus); s.NodeAgent = &c },
		},
	}
	for _, agent := range DrainRequestAgents {
		agent := agent
		ts = append(ts, topic{
			files:  []string{r.NodeDrainRequest(agent)},
			decode: decoder[NodeDrainRequest](),
			set:    func(s *Snapshot, _ string, v any) { s.DrainRequests[agent] = v.(NodeDrainRequest) },
		})
	}
	return ts
}

// watchDirs is every directory a topic file can appear in.
func watchDirs(ts []topic) []string {
	seen := map[string]bool{}
	var dirs []string
	add := func(d string) {
		if !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	for _, t := range ts {
		if t.dir != "" {
			add(t.dir)
		}
		for _, f := range t.files {
			add(filepath.Dir(f))
		}
	}
	return dirs
}

// readRelease returns the trimmed content of <Run>/eve-release, "" if it
// cannot be read (it is tiny; anything past 256 bytes is not a version).
func readRelease(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) > 256 {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// scanner reads all topics, remembering the last good value of each file.
type scanner struct {
	topics  []topic
	release string         // path of <Run>/eve-release
	good    map[string]any // path -> last good decoded value
}

func newScanner(r Root) *scanner {
	return &scanner{topics: topics(r), release: r.EVERelease(), good: map[string]any{}}
}

func (sc *scanner) scan() Snapshot {
	s := newSnapshot()
	s.EVERelease = readRelease(sc.release)
	present := map[string]bool{}
	load := func(t topic, path, key string) bool {
		data, err := readFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return false
		}
		present[path] = true
		var v any
		if err == nil {
			v, err = t.decode(path, data)
		} else {
			err = &FileError{Path: path, Offset: -1, Err: err}
		}
		if err != nil {
			s.Errors[path] = err
			if last, ok := sc.good[path]; ok {
				t.set(&s, key, last)
			}
			return true
		}
		sc.good[path] = v
		t.set(&s, key, v)
		return true
	}
	for _, t := range sc.topics {
		if t.dir != "" {
			keys, err := listKeys(t.dir)
			if err != nil {
				s.Errors[t.dir] = err
			}
			for _, k := range keys {
				load(t, keyFile(t.dir, k), k)
			}
			continue
		}
		for _, p := range t.files {
			if load(t, p, topicKey(p)) {
				break
			}
		}
	}
	for p := range sc.good {
		if !present[p] {
			delete(sc.good, p)
		}
	}
	return s
}

// ReadSnapshot reads every topic once. Files that fail to decode are in
// Errors and absent from the snapshot.
func ReadSnapshot(root Root) Snapshot { return newScanner(root).scan() }

// WatchOptions tune a Watcher. Zero values mean the defaults.
type WatchOptions struct {
	// Debounce is how long the files must be quiet before a rescan
	// (default 100ms). A steady stream of changes still rescans at least
	// every 10 Debounce periods.
	Debounce time.Duration
	// Resync rescans unconditionally at this interval, in case a
	// notification was lost (default 30s).
	Resync time.Duration
	// Log receives warnings (default: logrus's standard logger).
	Log logrus.FieldLogger
}

// Watcher follows the topics under a Root.
type Watcher struct {
	root Root
	opts WatchOptions
}

// NewWatcher returns a Watcher for root.
func NewWatcher(root Root, opts WatchOptions) *Watcher {
	if opts.Debounce <= 0 {
		opts.Debounce = 100 * time.Millisecond
	}
	if opts.Resync <= 0 {
		opts.Resync = 30 * time.Second
	}
	if opts.Log == nil {
		opts.Log = logrus.StandardLogger()
	}
	opts.Log = opts.Log.WithField("component", "eve-pubsub")
	return &Watcher{root: root, opts: opts}
}

// Watch sends the current Snapshot at once, then a new one whenever the
// content of the followed files changes (a rewrite with the same content
// sends nothing). Only the latest snapshot is kept for a slow reader. The
// channel is closed when ctx ends. Directories that do not exist yet are
// noticed through their nearest existing parent; Watch creates nothing.
func (w *Watcher) Watch(ctx context.Context) <-chan Snapshot {
	out := make(chan Snapshot, 1)
	go w.run(ctx, out)
	return out
}

func (w *Watcher) run(ctx context.Context, out chan Snapshot) {
	defer close(out)
	log := w.opts.Log
	sc := newScanner(w.root)
	dirs := watchDirs(sc.topics)

	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		log.WithError(err).Warn("file notifications unavailable; polling only")
		fsw = nil
	} else {
		defer fsw.Close()
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if fsw != nil {
		events, errs = fsw.Events, fsw.Errors
	}

	var last []byte
	publish := func() {
		// Arm first, then read: anything written after the read is
		// seen as an event.
		w.arm(fsw, dirs)
		s := sc.scan()
		fp := s.fingerprint()
		if last != nil && string(fp) == string(last) {
			return
		}
		last = fp
		select {
		case out <- s:
		default:
			select { // drop the unread older snapshot
			case <-out:
			default:
			}
			out <- s
		}
	}
	publish()

	resync := time.NewTicker(w.opts.Resync)
	defer resync.Stop()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	var pendingSince time.Time
	kick := func() {
		now := time.Now()
		if pendingSince.IsZero() {
			pendingSince = now
		}
		if now.Sub(pendingSince) < 10*w.opts.Debounce {
			debounce.Reset(w.opts.Debounce)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			kick()
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			log.WithError(err).Warn("file notification error; rescanning")
			kick()
		case <-debounce.C:
			pendingSince = time.Time{}
			publish()
		case <-resync.C:
			publish()
		}
	}
}

// arm makes sure each directory, or its nearest existing parent while it
// does not exist, is watched, and drops watches no longer needed.
func (w *Watcher) arm(fsw *fsnotify.Watcher, dirs []string) {
	if fsw == nil {
		return
	}
	want := map[string]bool{}
	for _, d := range dirs {
		if p := nearestExisting(d); p != "" {
			want[p] = true
		}
	}
	have := map[string]bool{}
	for _, p := range fsw.WatchList() {
		have[p] = true
	}
	var add []string
	for p := range want {
		if !have[p] {
			add = append(add, p)
		}
	}
	sort.Strings(add)
	for _, p := range add {
		if err := fsw.Add(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			w.opts.Log.WithError(err).WithField("dir", p).Warn("cannot watch directory")
		}
	}
	for p := range have {
		if !want[p] {
			_ = fsw.Remove(p)
		}
	}
}

// nearestExisting returns dir if it is an existing directory, else its
// closest existing ancestor directory, or "" if there is none.
func nearestExisting(dir string) string {
	d := filepath.Clean(dir)
	for {
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			return d
		}
		parent := filepath.Dir(d)
		if parent == d {
			return ""
		}
		d = parent
	}
}
