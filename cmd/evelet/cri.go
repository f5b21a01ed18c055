package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/lf-edge/evelet/cri"
	"github.com/lf-edge/evelet/cri/containerd"
)

// runCRI serves evelet's CRI shim without the agent: for debugging and for
// measuring the shim against containerd directly.
func runCRI(args []string) int {
	fs := flag.NewFlagSet("cri", flag.ContinueOnError)
	socket := fs.String("socket", "/run/evelet/cri.sock", "CRI socket to serve")
	ctrd := fs.String("containerd", "unix:///run/containerd-user/containerd.sock", "containerd CRI endpoint")
	level := fs.String("log-level", "info", "log level")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := newLogger(*level)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
	be, err := containerd.Dial(dctx, *ctrd)
	dcancel()
	if err != nil {
		log.WithError(err).Error("containerd not reachable")
		return 1
	}
	defer be.Close()
	srv, err := cri.NewServer(cri.Config{Socket: *socket, Backend: be, Log: log})
	if err != nil {
		log.WithError(err).Error("CRI server")
		return 1
	}
	log.WithField("socket", *socket).Info("CRI server listening")
	if err := srv.Serve(ctx); err != nil {
		log.WithError(err).Error("CRI server stopped")
		return 1
	}
	return 0
}
