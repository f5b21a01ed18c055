package meta

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/lf-edge/evelet/internal/atomicfile"
)

// A pod's plan is the extra networks its last ADD attached, kept by pod UID
// beyond the sandbox's DEL. When a pod's sandbox dies during a network
// outage, the kubelet (which runs the pods it knows without the apiserver)
// makes a new one; ADD then cannot read the pod or its NADs, and attaches
// what the pod had instead of failing. Only an apiserver that does not
// answer leads here: a pod it says is gone, or forbidden, is not attached.
// network-status is not rewritten then (the apiserver is not there to take
// it); it keeps what the last ADD wrote.

// planKeep is how long a plan outlives its pod's last attachment. A
// sandbox is recreated within seconds of its DEL, so a day is plenty.
const planKeep = 24 * time.Hour

type podPlan struct {
	Namespace   string       `json:"namespace"`
	Name        string       `json:"name"`
	UID         string       `json:"uid"`
	Attachments []attachment `json:"attachments"` // the extra networks, in ADD order
}

// uidPattern is what a pod UID may look like here: it becomes a file name.
var uidPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func (c *Conf) plansDir() string { return filepath.Join(c.cacheDir(), "pods") }

func (c *Conf) planPath(uid string) (string, error) {
	if !uidPattern.MatchString(uid) || strings.Contains(uid, "..") {
		return "", fmt.Errorf("pod uid %q is not a valid file name", uid)
	}
	return filepath.Join(c.plansDir(), uid+".json"), nil
}

// savePlan keeps what ADD attached for the record's pod.
func (c *Conf) savePlan(rec *record) error {
	p, err := c.planPath(rec.PodUID)
	if err != nil {
		return err
	}
	pl := podPlan{Namespace: rec.PodNamespace, Name: rec.PodName, UID: rec.PodUID}
	for _, a := range rec.Attachments[1:] {
		a.DefaultRouteVia = nil // what ADD installed, not what it asks for
		pl.Attachments = append(pl.Attachments, a)
	}
	b, err := json.Marshal(pl)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.plansDir(), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(p, b, 0o600)
}

// loadPlan returns the pod's plan, nil if there is none or it is of
// another pod of that UID's name.
func (c *Conf) loadPlan(namespace, name, uid string) (*podPlan, error) {
	p, err := c.planPath(uid)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var pl podPlan
	if err := json.Unmarshal(b, &pl); err != nil {
		return nil, fmt.Errorf("pod plan %s: %w", p, err)
	}
	if pl.UID != uid || pl.Namespace != namespace || pl.Name != name {
		return nil, nil
	}
	return &pl, nil
}

// touchPlan restarts the plan's keep time: its pod's sandbox was just
// deleted, and a new one may follow.
func (c *Conf) touchPlan(uid string) {
	if p, err := c.planPath(uid); err == nil {
		now := time.Now()
		os.Chtimes(p, now, now)
	}
}

// prunePlans removes the plans of pods with no attachment record on the
// node that were last used more than planKeep ago. GC runs it (the agent
// sends one every 30 minutes), not ADD: it reads every record. Best
// effort: a plan left is a small file, and the next GC tries again.
func (c *Conf) prunePlans(now time.Time) {
	ents, err := os.ReadDir(c.plansDir())
	if err != nil {
		return
	}
	recs, err := c.records()
	if err != nil {
		return
	}
	live := map[string]bool{}
	for _, r := range recs {
		live[r.PodUID] = true
	}
	for _, e := range ents {
		uid, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || live[uid] {
			continue
		}
		if fi, err := e.Info(); err == nil && now.Sub(fi.ModTime()) > planKeep {
			os.Remove(filepath.Join(c.plansDir(), e.Name()))
		}
	}
}
