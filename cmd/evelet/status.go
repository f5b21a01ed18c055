package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/lf-edge/evelet/agent"
)

func runStatus(args []string) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	runDir := fs.String("run-dir", "/run/evelet", "agent's volatile state root")
	out := fs.String("o", "", "output format: '' (table) or json")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	s, err := agent.ReadStatus(*runDir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "evelet status: %v (is the agent running with --run-dir=%s?)\n", err, *runDir)
		return 1
	}
	alive, why := s.Liveness(time.Now())
	switch *out {
	case "json":
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		// The status as written, plus what the reader concludes about the
		// writer (an old heartbeat means the agent is gone or stuck).
		enc.Encode(struct {
			*agent.Status
			Stale string `json:"stale,omitempty"`
		}{s, why})
	case "":
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		row := func(k, v string) {
			if v != "" {
				fmt.Fprintf(w, "%s:\t%s\n", k, v)
			}
		}
		if !alive {
			row("Agent", why)
		}
		row("Phase", string(s.Phase))
		row("Source", s.Source)
		row("Cluster", s.APIServer)
		row("Node", s.NodeName)
		row("Device", s.DeviceUUID)
		row("Credentials", s.Credentials)
		if s.ClientCertExpiry != nil {
			row("Client cert expires", s.ClientCertExpiry.Format(time.RFC3339))
		}
		if s.KubeletPID != 0 {
			row("Kubelet", fmt.Sprintf("pid %d, %d restarts", s.KubeletPID, s.KubeletRestarts))
		}
		if c := s.APICache; c != nil {
			conn := "online"
			if !c.Online {
				conn = "OFFLINE"
				if c.LastContact != nil {
					conn += fmt.Sprintf(", last contact %s (%s ago)", c.LastContact.Format(time.RFC3339), time.Since(*c.LastContact).Round(time.Second))
				}
			}
			row("Apiserver", conn)
			through := "kubelet through it"
			if !c.KubeletThroughCache {
				through = "kubelet not through it yet (bootstrapping; restarted onto it once it has its certificate)"
			}
			row("API cache", fmt.Sprintf("%d objects, %d hits, %d misses offline, %d reconnects; %s", c.Objects, c.Hits, c.Misses, c.Reconnects, through))
		}
		row("Last error", s.LastError)
		for _, e := range s.ConfigErrors {
			row("Config item refused", e)
		}
		row("Updated", s.Updated.Format(time.RFC3339))
		if !s.Heartbeat.IsZero() {
			row("Heartbeat", s.Heartbeat.Format(time.RFC3339))
		}
		w.Flush()
	default:
		fmt.Fprintf(os.Stderr, "evelet status: unknown output format %q\n", *out)
		return 2
	}
	return 0
}
