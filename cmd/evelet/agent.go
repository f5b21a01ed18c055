package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/version"
	"github.com/sirupsen/logrus"
)

func newLogger(level string) (*logrus.Entry, error) {
	l := logrus.New()
	lv, err := logrus.ParseLevel(level)
	if err != nil {
		return nil, err
	}
	l.SetLevel(lv)
	l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	return logrus.NewEntry(l), nil
}

func runAgent(args []string) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	stateDir := fs.String("state-dir", "/persist/evelet", "persistent state root (credentials, kubelet root, logs)")
	runDir := fs.String("run-dir", "/run/evelet", "volatile state root (sockets, status)")
	joinFile := fs.String("join-file", "", "YAML join material (apiServer, token, caCertHashes or kubeconfig; nodeName, deviceUUID)")
	ctrd := fs.String("containerd", "unix:///run/containerd-user/containerd.sock", "containerd CRI endpoint pods run on")
	kubeletPort := fs.Int("kubelet-port", 0, "kubelet API port (0: 10250)")
	healthzPort := fs.Int("kubelet-healthz-port", 0, "kubelet healthz port (0: 10248)")
	cgroupDriver := fs.String("cgroup-driver", "cgroupfs", "cgroup driver shared by the kubelet and containerd")
	level := fs.String("log-level", "info", "log level")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := newLogger(*level)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if *joinFile == "" {
		log.Error("--join-file is required (the EVE channel is not wired yet)")
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		log.WithError(err).Error("cannot find own binary")
		return 1
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	log.WithField("version", version.String()).Info("evelet agent starting")
	a := agent.New(agent.Config{
		StateDir: *stateDir, RunDir: *runDir, ContainerdEndpoint: *ctrd,
		Source: &agent.JoinFile{Path: *joinFile}, Self: self,
		KubeletPort: int32(*kubeletPort), KubeletHealthzPort: int32(*healthzPort),
		CgroupDriver: *cgroupDriver, Log: log,
	})
	if err := a.Run(ctx); err != nil && ctx.Err() == nil {
		log.WithError(err).Error("agent stopped")
		return 1
	}
	log.Info("evelet agent stopped")
	return 0
}
