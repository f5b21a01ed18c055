package vm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/kubelet/pkg/cri/streaming"

	"github.com/lf-edge/evelet/cri"
	"github.com/lf-edge/evelet/cri/vm/stream"
	"github.com/lf-edge/evelet/policy"
)

// Handler is the RuntimeClass handler of VM pods.
const Handler = "eve-vm"

// idLen is the length of the IDs the backend makes: 128 random bits in
// hex, short enough that socket paths under the state root stay within
// sun_path's 107 bytes.
const idLen = 32

// DefaultKVMDevice is where KVM is, when the device has it.
const DefaultKVMDevice = "/dev/kvm"

// startTimeout bounds how long StartContainer waits for QEMU to come up.
const startTimeout = 60 * time.Second

// Config is what the VM backend needs.
type Config struct {
	// StateDir holds the backend's state (<state-root>/vm); it must be on
	// persistent storage for VMs to be re-adopted after a restart.
	StateDir string
	// ContainerdSocket is containerd's gRPC socket: disks are read from its
	// content store, namespace k8s.io.
	ContainerdSocket string
	// Images is the CRI image service (containerd's), used to find an
	// image's names from the reference the kubelet passes.
	Images runtimeapi.ImageServiceClient
	// Network sets up pod networking; nil means loopback only, with netns
	// files under NetnsDir.
	Network  Network
	NetnsDir string
	// QEMU and QEMUImg are the binaries; empty means found in PATH.
	QEMU, QEMUImg string
	// Supervisor is the command that runs `evelet vmm`; the container's
	// directory is appended. Empty means this executable with "vmm".
	Supervisor []string
	// AllowEmulation says whether the device owner allows TCG
	// (evelet.policy.allow-vm-emulation); asked at each CreateContainer.
	AllowEmulation func() bool
	// OverlayMaxSize is the cap of a VM's writable overlay in bytes
	// (evelet.policy.vm-overlay-max-size); asked at each CreateContainer.
	// nil: policy.DefaultVMOverlayMaxSize.
	OverlayMaxSize func() int64
	// KVMDevice is /dev/kvm unless a test says otherwise.
	KVMDevice string
	// Sysfs is /sys unless a test says otherwise (IOMMU groups of claimed
	// PCI adapters, passthrough.go).
	Sysfs string
	// StreamAddr is the exec/attach streaming server's address
	// (DefaultStreamAddr when empty).
	StreamAddr string
	Log        *logrus.Entry
}

// Backend is the VM backend. It keeps nothing in memory that is not also on
// disk: a new Backend on the same StateDir sees the same pods and VMs.
type Backend struct {
	runtimeapi.ImageServiceClient
	cfg    Config
	store  store
	images *imageStore
	conn   *grpc.ClientConn
	net    Network
	log    *logrus.Entry
	locks  sync.Map // id -> *sync.Mutex
	// starting holds the containers StartContainer is bringing up: their
	// supervisor may not have written its pid yet, which is no loss.
	starting sync.Map // id -> struct{}
	// namesMu guards sandbox name reservations; reserving holds the names
	// of sandboxes whose RunPodSandbox runs now (sandboxName -> id), the
	// store holds the others.
	namesMu   sync.Mutex
	reserving map[string]string
	// extractions runs one disk extraction per image digest (diskCache);
	// extracting holds the digests being extracted, registered under
	// imageMu, which pruneDisks holds for its pass so that it never
	// removes an extraction's <hex>.tmp.
	extractions singleflight.Group
	extracting  sync.Map // hex -> struct{}
	imageMu     sync.Mutex
	// uidMu serialises giving VMs their uids (runas.go).
	uidMu sync.Mutex
	// diskUse is held shared from resolving a container's disk until the
	// container is saved, and exclusively by pruneDisks (diskgc.go).
	diskUse sync.RWMutex

	// resolveDisk gives the directory with an image's /disk/ files
	// (diskCache; tests without containerd replace it).
	resolveDisk func(ctx context.Context, ref string) (string, error)

	streamRT *stream.Runtime
	stream   streaming.Server
	httpSrv  *http.Server
}

var _ cri.Backend = (*Backend)(nil)

// New makes the backend; it does not start or stop any VM.
func New(cfg Config) (*Backend, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("vm: no state directory")
	}
	if cfg.Images == nil {
		return nil, errors.New("vm: no image service")
	}
	if cfg.Log == nil {
		cfg.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	if cfg.KVMDevice == "" {
		cfg.KVMDevice = DefaultKVMDevice
	}
	if cfg.AllowEmulation == nil {
		cfg.AllowEmulation = func() bool { return false }
	}
	if cfg.OverlayMaxSize == nil {
		cfg.OverlayMaxSize = func() int64 { return policy.DefaultVMOverlayMaxSize }
	}
	for _, b := range []*string{&cfg.QEMU, &cfg.QEMUImg} {
		if *b != "" {
			continue
		}
		name := "qemu-system-x86_64"
		if b == &cfg.QEMUImg {
			name = "qemu-img"
		}
		p, err := exec.LookPath(name)
		if err != nil {
			return nil, fmt.Errorf("vm: %s not found: %w", name, err)
		}
		*b = p
	}
	if len(cfg.Supervisor) == 0 {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		cfg.Supervisor = []string{self, "vmm"}
	}
	if cfg.Network == nil {
		if cfg.NetnsDir == "" {
			return nil, errors.New("vm: no network and no netns directory")
		}
		cfg.Network = LoopbackNetwork{Dir: cfg.NetnsDir}
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient("passthrough:///"+cfg.ContainerdSocket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (netConn, error) {
			return dialUnix(ctx, cfg.ContainerdSocket)
		}),
		grpc.WithAuthority("localhost"),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(cri.MaxMsgSize)),
	)
	if err != nil {
		return nil, fmt.Errorf("vm: containerd %s: %w", cfg.ContainerdSocket, err)
	}
	b := &Backend{
		ImageServiceClient: cfg.Images,
		cfg:                cfg,
		store:              store{dir: cfg.StateDir, log: cfg.Log, reported: &sync.Map{}},
		images:             newImageStore(conn, cfg.Images),
		conn:               conn,
		net:                cfg.Network,
		log:                cfg.Log,
		reserving:          map[string]string{},
	}
	b.resolveDisk = b.diskCache
	if cfg.StreamAddr == "" {
		cfg.StreamAddr = DefaultStreamAddr
	}
	if err := b.startStreaming(cfg.StreamAddr); err != nil {
		conn.Close()
		return nil, err
	}
	// Disks of images removed while the agent was down.
	go b.pruneDisksLogged(context.Background())
	return b, nil
}

func (b *Backend) Name() string { return "vm" }

// Close stops the streaming server and drops the containerd connection;
// VMs keep running.
func (b *Backend) Close() error {
	b.httpSrv.Close()
	return b.conn.Close()
}

// lock serialises changes to one sandbox or container.
func (b *Backend) lock(id string) func() {
	m, _ := b.locks.LoadOrStore(id, &sync.Mutex{})
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

func newID() string {
	var r [idLen / 2]byte
	if _, err := rand.Read(r[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(r[:])
}

// notFound and the other helpers make the gRPC errors the kubelet acts on.
func notFound(kind, id string) error {
	return status.Errorf(codes.NotFound, "%s %q not found in the VM backend", kind, id)
}

func lookupErr(kind, id string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return notFound(kind, id)
	}
	return status.Errorf(codes.Internal, "%s %s: %v", kind, id, err)
}

func unsupported(what string) error {
	return status.Errorf(codes.Unimplemented, "VM pods (RuntimeClass handler %s) do not support %s", Handler, what)
}

// Runtime-wide calls. The router asks the default backend (containerd) for
// these; the VM backend answers harmlessly where it is asked too.

func (b *Backend) Version(context.Context, *runtimeapi.VersionRequest, ...grpc.CallOption) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "evelet-vm", RuntimeVersion: "0.1.0", RuntimeApiVersion: "v1"}, nil
}

func (b *Backend) Status(context.Context, *runtimeapi.StatusRequest, ...grpc.CallOption) (*runtimeapi.StatusResponse, error) {
	return &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
		{Type: runtimeapi.RuntimeReady, Status: true}, {Type: runtimeapi.NetworkReady, Status: true}}}}, nil
}

func (b *Backend) RuntimeConfig(context.Context, *runtimeapi.RuntimeConfigRequest, ...grpc.CallOption) (*runtimeapi.RuntimeConfigResponse, error) {
	return &runtimeapi.RuntimeConfigResponse{}, nil
}

func (b *Backend) UpdateRuntimeConfig(context.Context, *runtimeapi.UpdateRuntimeConfigRequest, ...grpc.CallOption) (*runtimeapi.UpdateRuntimeConfigResponse, error) {
	return &runtimeapi.UpdateRuntimeConfigResponse{}, nil
}

func (b *Backend) ListMetricDescriptors(context.Context, *runtimeapi.ListMetricDescriptorsRequest, ...grpc.CallOption) (*runtimeapi.ListMetricDescriptorsResponse, error) {
	return &runtimeapi.ListMetricDescriptorsResponse{}, nil
}

func (b *Backend) ListPodSandboxMetrics(context.Context, *runtimeapi.ListPodSandboxMetricsRequest, ...grpc.CallOption) (*runtimeapi.ListPodSandboxMetricsResponse, error) {
	return &runtimeapi.ListPodSandboxMetricsResponse{}, nil
}

func (b *Backend) GetContainerEvents(context.Context, *runtimeapi.GetEventsRequest, ...grpc.CallOption) (grpc.ServerStreamingClient[runtimeapi.ContainerEventResponse], error) {
	return nil, unsupported("container events (the kubelet polls instead)")
}
