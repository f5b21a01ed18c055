// Command pause is evelet's pod sandbox process.
//
// The container runtime starts it as PID 1 of every pod sandbox: it holds the
// pod's namespaces open while the pod's containers come and go. It does
// nothing else: it sleeps until it is told to stop (SIGINT or SIGTERM, exit
// status 0) and, being PID 1, it reaps every orphaned child that the kernel
// re-parents to it (SIGCHLD), so that zombies never pile up in a pod that
// shares its PID namespace.
//
// It is built static (CGO_ENABLED=0) by github.com/lf-edge/evelet/images.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		fmt.Println("evelet pause")
		return
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: warning: not running as PID 1")
	}
	os.Exit(run(sigs))
}

// run waits for signals: on SIGCHLD it reaps, on SIGINT/SIGTERM it returns
// the exit status 0.
func run(sigs <-chan os.Signal) int {
	for sig := range sigs {
		switch sig {
		case syscall.SIGCHLD:
			reapAll()
		case syscall.SIGINT, syscall.SIGTERM:
			return 0
		}
	}
	return 0
}

// reapAll collects every child that has exited, without blocking. Signals
// coalesce, so one SIGCHLD may stand for many exited children.
func reapAll() int {
	n := 0
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return n
		}
		n++
	}
}
