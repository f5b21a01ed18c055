package cri

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/policy"
)

const (
	// MaxMsgSize matches the kubelet's CRI client limit, so that whatever the
	// kubelet may send or accept also fits through the shim.
	MaxMsgSize = 16 << 20

	// stopGrace bounds how long calls in flight (a slow PullImage, say) may
	// delay shutdown.
	stopGrace = 2 * time.Second

	// maxSocketPath is sun_path's limit on Linux (108 bytes with the NUL).
	maxSocketPath = 107
)

// Config is what a Server needs.
type Config struct {
	// Socket is the unix socket path the kubelet connects to.
	Socket string
	// Backend runs every pod whose RuntimeClass handler is not in Handlers.
	// The Server does not close it.
	Backend Backend
	// Handlers optionally routes RuntimeClass handlers to other backends
	// (cri/vm's backend for handler eve-vm). Nil means Backend runs everything.
	Handlers map[string]Backend
	// Log is the logger; nil means logrus' standard logger.
	Log *logrus.Entry
	// Policy is the EVE guardrail policy checked on RunPodSandbox and
	// CreateContainer; nil means policy.Default(). SetPolicy replaces it
	// while the server runs.
	Policy *policy.Policy
	// Metrics, if set, receives the server's Prometheus metrics
	// (docs/metrics.md); nil means no metrics.
	Metrics prometheus.Registerer
	// Pods, if set, gives RunPodSandbox the pod from the apiserver for the
	// spec-level guardrails (policy.PodSpecRules; podlookup.go). Nil: those
	// rules are not checked (CRI tests without a cluster).
	Pods PodSource
	// ClaimsDir is where evelet's DRA driver writes the CDI specs of
	// prepared ResourceClaims (dra/claimspec); the shim applies their
	// devices for their own pods (claims.go). "": no claim devices.
	ClaimsDir string
}

// Server is the CRI endpoint the kubelet talks to.
type Server struct {
	socket   string
	log      *logrus.Entry
	grpc     *grpc.Server
	stopping chan struct{}
	started  atomic.Bool
	policy   *atomic.Pointer[policy.Policy]
	router   *Router
	gate     *sandboxGate
}

// NewServer checks cfg and sets up the gRPC services; Serve starts listening.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Socket == "" {
		return nil, errors.New("cri: no socket path")
	}
	if len(cfg.Socket) > maxSocketPath {
		return nil, fmt.Errorf("cri: socket path %q is longer than %d bytes", cfg.Socket, maxSocketPath)
	}
	router, err := NewRouter(cfg.Backend, cfg.Handlers)
	if err != nil {
		return nil, err
	}
	log := cfg.Log
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	var metrics *Metrics
	unary := []grpc.UnaryServerInterceptor{unaryLogger(log)}
	stream := []grpc.StreamServerInterceptor{streamLogger(log)}
	if cfg.Metrics != nil {
		if metrics, err = NewMetrics(cfg.Metrics); err != nil {
			return nil, fmt.Errorf("cri: metrics: %w", err)
		}
		// Outermost, so that the time measured includes the logging.
		unary = append([]grpc.UnaryServerInterceptor{metrics.unaryInterceptor()}, unary...)
		stream = append([]grpc.StreamServerInterceptor{metrics.streamInterceptor()}, stream...)
	}
	pol := &atomic.Pointer[policy.Policy]{}
	p := policy.Default()
	if cfg.Policy != nil {
		p = cfg.Policy.Clone()
	}
	pol.Store(&p)
	g := grpc.NewServer(
		grpc.MaxRecvMsgSize(MaxMsgSize),
		grpc.MaxSendMsgSize(MaxMsgSize),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
	)
	stopping := make(chan struct{})
	var pods PodSource
	if cfg.Pods != nil {
		pods = newLastKnownPods(cfg.Pods, log)
	}
	gate := &sandboxGate{}
	runtimeapi.RegisterRuntimeServiceServer(g, &runtimeService{r: router, log: log, stopping: stopping, policy: pol, metrics: metrics, pods: pods, gate: gate, claimsDir: cfg.ClaimsDir})
	runtimeapi.RegisterImageServiceServer(g, &imageService{r: router})
	return &Server{socket: cfg.Socket, log: log, grpc: g, stopping: stopping, policy: pol, router: router, gate: gate}, nil
}

// SetPolicy replaces the guardrail policy, for calls that start from now
// on; it is safe while the server runs. Pods and containers that already
// exist are not touched: the device owner's stricter policy applies to new
// ones (and to new containers of existing pods).
func (s *Server) SetPolicy(p policy.Policy) {
	p = p.Clone()
	s.policy.Store(&p)
	s.log.WithField("policy", fmt.Sprintf("%+v", p)).Info("CRI guardrail policy set")
}

// Policy returns the guardrail policy in force.
func (s *Server) Policy() policy.Policy { return s.policy.Load().Clone() }

// Serve listens on the socket and serves until ctx is done, then stops
// gracefully (for at most a short grace period) and removes the socket.
// It returns nil after a clean stop. A Server serves only once.
func (s *Server) Serve(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("cri: Serve called twice")
	}
	l, err := s.listen()
	if err != nil {
		return err
	}
	defer s.removeSocket()

	served := make(chan error, 1)
	go func() { served <- s.grpc.Serve(l) }()
	s.log.WithField("socket", s.socket).Info("CRI server listening")

	select {
	case err := <-served:
		return fmt.Errorf("cri: serving %s: %w", s.socket, err)
	case <-ctx.Done():
	}

	close(s.stopping)
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		s.log.Warn("CRI server: calls still open after grace period, closing them")
		s.grpc.Stop()
		<-stopped
	}
	<-served
	s.log.WithField("socket", s.socket).Info("CRI server stopped")
	return nil
}

func (s *Server) listen() (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(s.socket), 0o750); err != nil {
		return nil, fmt.Errorf("cri: socket directory: %w", err)
	}
	if err := removeStaleSocket(s.socket); err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", s.socket)
	if err != nil {
		return nil, fmt.Errorf("cri: listen on %s: %w", s.socket, err)
	}
	// The socket is created with the process umask; until this chmod, only
	// the (0750) directory keeps others out, which is why we create it so.
	if err := os.Chmod(s.socket, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("cri: chmod %s: %w", s.socket, err)
	}
	return l, nil
}

// removeStaleSocket clears a socket left by a process that died, but refuses
// to touch one that still answers (a second evelet would steal the kubelet
// from the first) or a path that is not a socket at all.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cri: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("cri: %s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("cri: %s is in use by another process", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cri: removing stale socket: %w", err)
	}
	return nil
}

func (s *Server) removeSocket() {
	if err := os.Remove(s.socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.WithError(err).Warn("CRI server: removing socket")
	}
}
