package images

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

const pauseTar = "pause.tar"

// BuildPause compiles evelet's pause program (./images/pause of the module
// at moduleRoot) with goBinary, static (CGO_ENABLED=0, -ldflags "-s -w"),
// and writes the image PauseRef to outDir/pause.tar: one layer holding
// /pause, entrypoint ["/pause"]. The Go build cache keeps recompiling cheap;
// the tarball is rewritten only when the binary changed.
//
// moduleRoot "" means the module that `go env GOMOD` finds from the current
// directory; goBinary "" means "go" from $PATH.
//
// The image runs as root (no USER): pause holds no files, sockets or
// privileges of its own and only sleeps and reaps, and a pod that asks for
// another user through its securityContext gets it applied to the sandbox
// by the runtime. Leaving the user out also spares the image an /etc/passwd.
func BuildPause(ctx context.Context, goBinary, moduleRoot, outDir string) (tarPath string, err error) {
	if goBinary == "" {
		goBinary = "go"
	}
	if moduleRoot == "" {
		if moduleRoot, err = ModuleRoot(ctx, goBinary); err != nil {
			return "", err
		}
	}
	tmpDir, err := os.MkdirTemp("", "evelet-pause-build-")
	if err != nil {
		return "", fmt.Errorf("images: %w", err)
	}
	defer os.RemoveAll(tmpDir)
	binPath := filepath.Join(tmpDir, "pause")
	cmd := exec.CommandContext(ctx, goBinary, "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w", "-o", binPath, "./images/pause")
	cmd.Dir = moduleRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("images: building pause in %s: %w: %s", moduleRoot, err, strings.TrimSpace(string(out)))
	}
	bin, err := os.ReadFile(binPath)
	if err != nil {
		return "", fmt.Errorf("images: %w", err)
	}
	tarPath = filepath.Join(outDir, pauseTar)
	key := contentKey(PauseRef, bin)
	if cached(tarPath, key) {
		return tarPath, nil
	}
	img, err := PauseImage(bin, runtime.GOARCH)
	if err != nil {
		return "", err
	}
	if err := writeImage(PauseRef, img, tarPath, key); err != nil {
		return "", err
	}
	return tarPath, nil
}

// PauseImage is the pause image of arch around its static binary: one
// layer holding /pause, entrypoint ["/pause"].
func PauseImage(bin []byte, arch string) (v1.Image, error) {
	layer, err := layerTar([]entry{file("/pause", 0o755, bin)})
	if err != nil {
		return nil, err
	}
	return SingleLayerImage(layer, arch, "evelet images.BuildPause", v1.Config{
		Entrypoint: []string{"/pause"},
	})
}

// ModuleRoot returns the directory of the main module's go.mod as seen by
// `go env GOMOD` from the current directory.
func ModuleRoot(ctx context.Context, goBinary string) (string, error) {
	if goBinary == "" {
		goBinary = "go"
	}
	out, err := exec.CommandContext(ctx, goBinary, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("images: go env GOMOD: %w", err)
	}
	gomod := string(bytes.TrimSpace(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("images: not inside a Go module (go env GOMOD = %q)", gomod)
	}
	return filepath.Dir(gomod), nil
}
