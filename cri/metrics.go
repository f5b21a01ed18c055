package cri

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/lf-edge/evelet/policy"
)

// Backend label values for calls that no single backend answered.
const (
	// BackendNone: the call never reached a backend (refused by the
	// policy, or failed while routing).
	BackendNone = "none"
	// BackendAll: the call went to every backend (lists, UpdateRuntimeConfig).
	BackendAll = "all"
)

// Metrics are the CRI server's Prometheus metrics; docs/metrics.md
// describes them. The agent serves them; a nil *Metrics records nothing.
type Metrics struct {
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	rejections *prometheus.CounterVec
}

// durationBuckets span a list answered from memory (~100 µs) to an image
// pull over a slow uplink (minutes).
var durationBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}

// NewMetrics creates the metrics and registers them with reg. Registering
// twice with the same registry (the agent re-creates the server after a
// backend failure) reuses the collectors already registered.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evelet_cri_requests_total",
			Help: "CRI calls served, by method, the backend that answered and the gRPC status code.",
		}, []string{"method", "backend", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "evelet_cri_request_duration_seconds",
			Help:    "Time to answer unary CRI calls, backend included, by method and backend.",
			Buckets: durationBuckets,
		}, []string{"method", "backend"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "evelet_cri_policy_rejections_total",
			Help: "RunPodSandbox and CreateContainer calls refused by the EVE guardrail policy, by rule.",
		}, []string{"rule"}),
	}
	var err error
	if m.requests, err = register(reg, m.requests); err != nil {
		return nil, err
	}
	if m.duration, err = register(reg, m.duration); err != nil {
		return nil, err
	}
	if m.rejections, err = register(reg, m.rejections); err != nil {
		return nil, err
	}
	// Every rule appears from the start, so rate() works from the first refusal.
	for _, r := range policy.Rules() {
		m.rejections.WithLabelValues(r)
	}
	return m, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

func (m *Metrics) rejected(rule string) {
	if m != nil {
		m.rejections.WithLabelValues(rule).Inc()
	}
}

// callInfo travels in a call's context from the interceptor to the handler,
// which notes the backend it picked.
type callInfo struct{ backend string }

type callInfoKey struct{}

// noteBackend records which backend answers the call, for the metrics.
func noteBackend(ctx context.Context, name string) {
	if ci, ok := ctx.Value(callInfoKey{}).(*callInfo); ok {
		ci.backend = name
	}
}

// methodName is the last element of a gRPC full method name:
// "/runtime.v1.RuntimeService/ListContainers" -> "ListContainers".
func methodName(full string) string {
	return full[strings.LastIndexByte(full, '/')+1:]
}

func (m *Metrics) unaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		ci := &callInfo{backend: BackendNone}
		resp, err := handler(context.WithValue(ctx, callInfoKey{}, ci), req)
		method := methodName(info.FullMethod)
		m.duration.WithLabelValues(method, ci.backend).Observe(time.Since(start).Seconds())
		m.requests.WithLabelValues(method, ci.backend, status.Code(err).String()).Inc()
		return resp, err
	}
}

// streamInterceptor counts streams (GetContainerEvents) when they end; their
// duration is how long the kubelet stayed subscribed, not a latency, and is
// not recorded.
func (m *Metrics) streamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ci := &callInfo{backend: BackendNone}
		err := handler(srv, &infoStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), callInfoKey{}, ci)})
		m.requests.WithLabelValues(methodName(info.FullMethod), ci.backend, status.Code(err).String()).Inc()
		return err
	}
}

// infoStream is a server stream whose context carries a callInfo.
type infoStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *infoStream) Context() context.Context { return s.ctx }
