package images

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/lf-edge/evelet/internal/atomicfile"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The EVE service image: what an EVE device runs evelet from. EVE's build
// composes its root file system from linuxkit packages; a service's
// privileges come from the package's build.yml "config", which linuxkit
// stores in the image label org.mobyproject.config. We build the image
// without linuxkit or a Docker engine, so the label is written here, from
// ServiceConfig (docs/eve-service.md justifies each entry).

// Paths inside the service image.
const (
	ServiceBinDir   = "/usr/bin"                    // evelet's binaries
	ServiceCNIDir   = "/opt/cni/bin"                // the CNI plugins pods need
	ServicePauseTar = "/usr/share/evelet/pause.tar" // the pod sandbox image, for the runtime to import
	ServiceConfigL  = "org.mobyproject.config"      // linuxkit's service-config label
	serviceSource   = "https://github.com/lf-edge/evelet"
)

// ServiceArch is what the image carries for one architecture: files by
// name (the name is the file's name in the image).
type ServiceArch struct {
	Arch     string            // GOARCH: amd64, arm64
	Bin      map[string]string // name -> path of a static binary, to ServiceBinDir
	CNI      map[string]string // name -> path of a CNI plugin, to ServiceCNIDir
	PauseTar string            // path of the pause image (docker-archive) for Arch
}

// ServiceDevice is a device node the service may open (linuxkit's
// "devices": the node is created in the service's /dev and allowed in its
// device cgroup).
type ServiceDevice struct {
	Path  string `json:"path"`
	Type  string `json:"type"`
	Major int64  `json:"major"`
	Minor int64  `json:"minor"`
	Mode  string `json:"mode"`
}

// ServiceConfigSpec is the subset of linuxkit's image config that evelet's
// service sets.
type ServiceConfigSpec struct {
	Binds             []string        `json:"binds"`
	Capabilities      []string        `json:"capabilities"`
	Devices           []ServiceDevice `json:"devices"`
	Net               string          `json:"net"`
	RootfsPropagation string          `json:"rootfsPropagation"`
	NoNewPrivileges   bool            `json:"noNewPrivileges"`
}

// ServiceConfig is the least the agent and the processes it runs need on
// an EVE device; docs/eve-service.md gives, for each entry, the code that
// opens it.
var ServiceConfig = ServiceConfigSpec{
	Binds: []string{
		"/persist/evelet:/persist/evelet:rshared,rbind",
		"/persist/checkpoint:/persist/checkpoint:ro",
		"/persist/status:/persist/status:ro",
		"/persist/certs:/persist/certs:ro",
		"/run/eve-release:/run/eve-release:ro",
		"/run/eve-hv-type:/run/eve-hv-type:ro",
		"/run/zedagent:/run/zedagent:ro",
		"/run/zedrouter:/run/zedrouter:ro",
		"/run/baseosmgr:/run/baseosmgr:ro",
		"/run/nodeagent:/run/nodeagent:ro",
		"/run/domainmgr:/run/domainmgr:ro",
		"/run/zedkube:/run/zedkube",
		"/run/evelet:/run/evelet:rshared,rbind",
		"/run/containerd-user:/run/containerd-user",
		"/run/netns:/run/netns:rshared,rbind",
		"/var/lib/cni:/var/lib/cni",
		"/sys/fs/cgroup:/sys/fs/cgroup",
		"/etc/resolv.conf:/etc/resolv.conf:ro",
	},
	Capabilities: []string{
		"CAP_CHOWN",
		"CAP_DAC_OVERRIDE",
		"CAP_FOWNER",
		"CAP_KILL",
		"CAP_NET_ADMIN",
		"CAP_NET_BIND_SERVICE",
		"CAP_NET_RAW",
		"CAP_SETGID",
		"CAP_SETUID",
		"CAP_SYS_ADMIN",
		"CAP_SYS_RESOURCE",
	},
	Devices: []ServiceDevice{
		{Path: "/dev/kvm", Type: "c", Major: 10, Minor: 232, Mode: "0660"},
		{Path: "/dev/net/tun", Type: "c", Major: 10, Minor: 200, Mode: "0666"},
		{Path: "/dev/vhost-net", Type: "c", Major: 10, Minor: 238, Mode: "0660"},
		{Path: "/dev/kmsg", Type: "c", Major: 1, Minor: 11, Mode: "0440"},
	},
	Net:               "host",
	RootfsPropagation: "shared",
	// QEMU drops to a per-VM uid with -runas (setuid, not an exec of a
	// set-uid file): no_new_privs does not stand in its way.
	NoNewPrivileges: true,
}

// ServiceImage assembles the image of one architecture: one layer, every
// time at the epoch, files sorted, so the same inputs give the same digest.
func ServiceImage(a ServiceArch) (v1.Image, error) {
	entries := []entry{dir("/usr", 0o755), dir(ServiceBinDir, 0o755), dir("/opt", 0o755), dir("/opt/cni", 0o755),
		dir(ServiceCNIDir, 0o755), dir("/usr/share", 0o755), dir("/usr/share/evelet", 0o755),
		dir("/etc", 0o755), dir("/tmp", 0o1777), dir("/var", 0o755), dir("/var/lib", 0o755), dir("/run", 0o755),
		dir("/persist", 0o755), dir("/sys", 0o555), dir("/proc", 0o555), dir("/dev", 0o755)}
	add := func(dst, src string, mode int64) error {
		b, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("images: service image (%s): %w", a.Arch, err)
		}
		entries = append(entries, file(dst, mode, b))
		return nil
	}
	if a.Bin["evelet"] == "" {
		return nil, fmt.Errorf("images: service image (%s): no evelet binary", a.Arch)
	}
	for _, set := range []struct {
		files map[string]string
		dir   string
	}{{a.Bin, ServiceBinDir}, {a.CNI, ServiceCNIDir}} {
		for _, name := range slices.Sorted(maps.Keys(set.files)) {
			if name == "" || filepath.Base(name) != name {
				return nil, fmt.Errorf("images: service image (%s): bad file name %q", a.Arch, name)
			}
			if err := add(set.dir+"/"+name, set.files[name], 0o755); err != nil {
				return nil, err
			}
		}
	}
	if a.PauseTar != "" {
		if err := add(ServicePauseTar, a.PauseTar, 0o644); err != nil {
			return nil, err
		}
	}
	layer, err := layerTar(entries)
	if err != nil {
		return nil, err
	}
	label, err := json.Marshal(ServiceConfig)
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	img, err := SingleLayerImage(layer, a.Arch, "evelet images.ServiceImage", v1.Config{
		Entrypoint: []string{ServiceBinDir + "/evelet", "agent"},
		Env:        []string{"PATH=" + ServiceBinDir + ":/usr/sbin:/sbin:/bin"},
		Labels: map[string]string{
			ServiceConfigL:                      string(label),
			"org.opencontainers.image.source":   serviceSource,
			"org.opencontainers.image.title":    "evelet",
			"org.opencontainers.image.licenses": "Apache-2.0",
		},
	})
	if err != nil {
		return nil, err
	}
	// OCI media types: the image goes into an OCI layout as well as a
	// docker-archive, and containerd reads both.
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	return img, nil
}

// ServiceIndex is the multi-architecture index of the images of arches.
func ServiceIndex(arches []ServiceArch) (v1.ImageIndex, map[string]v1.Image, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	imgs := map[string]v1.Image{}
	for _, a := range arches {
		if _, dup := imgs[a.Arch]; dup {
			return nil, nil, fmt.Errorf("images: service image: %s twice", a.Arch)
		}
		img, err := ServiceImage(a)
		if err != nil {
			return nil, nil, err
		}
		imgs[a.Arch] = img
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			MediaType: types.OCIManifestSchema1,
			Platform:  &v1.Platform{OS: "linux", Architecture: a.Arch},
		}})
	}
	return idx, imgs, nil
}

// WriteService writes the service image of arches under outDir: an OCI
// image layout (outDir/evelet-service.oci, the index of every
// architecture) and one docker-archive per architecture
// (outDir/evelet-service-<arch>.tar), each tagged ref. It returns the
// index's digest. The layout is built beside and renamed into place, so an
// interrupted build leaves the previous one whole.
func WriteService(ref string, arches []ServiceArch, outDir string) (v1.Hash, error) {
	idx, imgs, err := ServiceIndex(arches)
	if err != nil {
		return v1.Hash{}, err
	}
	digest, err := idx.Digest()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("images: %w", err)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return v1.Hash{}, fmt.Errorf("images: %w", err)
	}
	final := filepath.Join(outDir, "evelet-service.oci")
	tmp, err := os.MkdirTemp(outDir, ".evelet-service.oci.tmp-")
	if err != nil {
		return v1.Hash{}, fmt.Errorf("images: %w", err)
	}
	defer os.RemoveAll(tmp)
	if _, err := layout.Write(tmp, idx); err != nil {
		return v1.Hash{}, fmt.Errorf("images: OCI layout: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return v1.Hash{}, fmt.Errorf("images: %w", err)
	}
	old := final + ".old"
	_ = os.RemoveAll(old)
	if err := os.Rename(final, old); err != nil && !os.IsNotExist(err) {
		return v1.Hash{}, fmt.Errorf("images: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return v1.Hash{}, fmt.Errorf("images: %w", err)
	}
	_ = os.RemoveAll(old)
	for _, arch := range slices.Sorted(maps.Keys(imgs)) {
		if err := WriteTarball(ref, imgs[arch], filepath.Join(outDir, "evelet-service-"+arch+".tar")); err != nil {
			return v1.Hash{}, err
		}
	}
	if err := atomicfile.WriteFile(filepath.Join(outDir, "evelet-service.digest"), []byte(digest.String()+"\n"), 0o644); err != nil {
		return v1.Hash{}, err
	}
	return digest, nil
}
