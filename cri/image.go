package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// imageService forwards ImageService calls to the default backend: images
// live in containerd for every backend (VM disks are pulled as OCI images
// too), so there is one image store and nothing to route.
type imageService struct {
	// Unsafe for the same reason as in runtimeService: a new RPC must break the build.
	runtimeapi.UnsafeImageServiceServer
	r *Router
}

var _ runtimeapi.ImageServiceServer = (*imageService)(nil)

func (s *imageService) ListImages(ctx context.Context, req *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	return s.backend(ctx).ListImages(ctx, req)
}

func (s *imageService) ImageStatus(ctx context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	return s.backend(ctx).ImageStatus(ctx, req)
}

func (s *imageService) PullImage(ctx context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	return s.backend(ctx).PullImage(ctx, req)
}

// ImageObserver is a backend that keeps something derived from images (the
// VM backend's extracted disks) and drops what is no longer needed once an
// image is removed.
type ImageObserver interface {
	ImageRemoved(ctx context.Context)
}

func (s *imageService) RemoveImage(ctx context.Context, req *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	resp, err := s.backend(ctx).RemoveImage(ctx, req)
	if err != nil {
		return resp, err
	}
	for _, b := range s.r.Backends() {
		if o, ok := b.(ImageObserver); ok {
			o.ImageRemoved(ctx)
		}
	}
	return resp, nil
}

func (s *imageService) ImageFsInfo(ctx context.Context, req *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	return s.backend(ctx).ImageFsInfo(ctx, req)
}

// backend is the default backend, noted for the metrics.
func (s *imageService) backend(ctx context.Context) Backend {
	b := s.r.Default()
	noteBackend(ctx, b.Name())
	return b
}
