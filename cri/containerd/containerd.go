// Package containerd is the CRI backend for container pods: it forwards to
// containerd's own CRI endpoint (on EVE, the user containerd's socket).
package containerd

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/cri"
)

const (
	// maxMsgSize matches the kubelet's CRI client and evelet's server, so a
	// response the kubelet would accept is never cut off in between.
	maxMsgSize = cri.MaxMsgSize

	// DefaultDialTimeout bounds Dial when ctx has no deadline of its own.
	DefaultDialTimeout = 30 * time.Second

	unixScheme = "unix://"
)

type backend struct {
	runtimeapi.RuntimeServiceClient
	runtimeapi.ImageServiceClient
	conn *grpc.ClientConn
}

var _ cri.Backend = (*backend)(nil)

func (b *backend) Name() string { return "containerd" }

func (b *backend) Close() error { return b.conn.Close() }

// Dial connects to a CRI endpoint, "unix:///path/containerd.sock" or a bare
// path, and returns once it answers Version, so that a wrong path or a
// containerd without the CRI plugin fails here, with the endpoint named,
// rather than on the kubelet's first call. ctx bounds the wait.
func Dial(ctx context.Context, endpoint string) (cri.Backend, error) {
	path, err := socketPath(endpoint)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultDialTimeout)
		defer cancel()
	}

	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}
	conn, err := grpc.NewClient("passthrough:///"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer),
		// The socket path is not a host name; keep it out of :authority.
		grpc.WithAuthority("localhost"),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize), grpc.MaxCallSendMsgSize(maxMsgSize)),
		// grpc's default backoff grows to 2 minutes; after a containerd
		// restart we want pods served again within seconds, as the kubelet does.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("CRI endpoint %s: %w", endpoint, err)
	}
	b := &backend{
		RuntimeServiceClient: runtimeapi.NewRuntimeServiceClient(conn),
		ImageServiceClient:   runtimeapi.NewImageServiceClient(conn),
		conn:                 conn,
	}
	// WaitForReady rides out containerd still starting up, until ctx ends;
	// grpc's error then carries the last connect error ("no such file", ...).
	if _, err := b.Version(ctx, &runtimeapi.VersionRequest{}, grpc.WaitForReady(true)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("CRI endpoint %s not answering Version: %w", endpoint, err)
	}
	return b, nil
}

func socketPath(endpoint string) (string, error) {
	path := endpoint
	if strings.HasPrefix(endpoint, unixScheme) {
		path = strings.TrimPrefix(endpoint, unixScheme)
	} else if strings.Contains(endpoint, "://") {
		return "", fmt.Errorf("CRI endpoint %s: only unix sockets are supported", endpoint)
	}
	if !strings.HasPrefix(path, "/") {
		return "", fmt.Errorf("CRI endpoint %s: socket path must be absolute", endpoint)
	}
	return path, nil
}
