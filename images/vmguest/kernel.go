package vmguest

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// kernelMeta is Debian's metapackage that depends on the current cloud
// kernel; its dependency names the versioned package to fetch.
const kernelMeta = "linux-image-cloud-amd64"

// guestModules are the modules the guest needs, before dependencies:
// virtio-pci transport, NICs, virtio-serial (guest agent port), virtio
// disks (for backends that attach them), the ACPI power button and evdev
// (system_powerdown), and the virtio RNG (entropy early in boot).
var guestModules = []string{
	"virtio_pci", "virtio_net", "virtio_console", "virtio_blk",
	"button", "evdev", "virtio_rng",
}

// kernelTree is an unpacked Debian kernel package.
type kernelTree struct {
	pkg     string // e.g. linux-image-6.1.0-57-cloud-amd64
	version string // the module directory name, e.g. 6.1.0-57-cloud-amd64
	root    string // where the package was unpacked
}

func (k *kernelTree) vmlinuz() string {
	return filepath.Join(k.root, "boot", "vmlinuz-"+k.version)
}

func (k *kernelTree) moduleDir() string {
	return filepath.Join(k.root, "lib", "modules", k.version)
}

var dependsRE = regexp.MustCompile(`(?m)^\s*Depends:\s*(linux-image-\S+-cloud-amd64)\s*$`)

// fetchKernel returns Debian's cloud kernel unpacked under
// cacheDir/kernel/<package>, downloading it with `apt-get download` and
// unpacking it with `dpkg -x` when it is not there yet. The package name
// carries the kernel ABI version, so the cache is keyed by version. When
// apt cannot name the package (no package lists), the newest kernel already
// in the cache is used.
func fetchKernel(ctx context.Context, cacheDir string) (*kernelTree, error) {
	base := filepath.Join(cacheDir, "kernel")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, fmt.Errorf("vmguest: %w", err)
	}
	pkg, aptErr := kernelPackage(ctx)
	if aptErr != nil {
		cached, _ := filepath.Glob(filepath.Join(base, "linux-image-*"))
		sort.Strings(cached)
		for i := len(cached) - 1; i >= 0; i-- {
			if k, err := openKernel(cached[i]); err == nil {
				return k, nil
			}
		}
		return nil, fmt.Errorf("vmguest: finding the kernel package: %w (and no kernel cached in %s)", aptErr, base)
	}
	dir := filepath.Join(base, pkg)
	if k, err := openKernel(dir); err == nil {
		return k, nil
	}
	tmp, err := os.MkdirTemp(base, "."+pkg+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("vmguest: %w", err)
	}
	defer os.RemoveAll(tmp)
	// apt-get download runs unsandboxed when _apt cannot write the
	// directory; that is only a warning.
	dl := exec.CommandContext(ctx, "apt-get", "download", "-q", pkg)
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("vmguest: apt-get download %s: %w: %s", pkg, err, strings.TrimSpace(string(out)))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("vmguest: apt-get download %s left %d .deb files", pkg, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if out, err := exec.CommandContext(ctx, "dpkg", "-x", debs[0], root).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("vmguest: dpkg -x %s: %w: %s", debs[0], err, strings.TrimSpace(string(out)))
	}
	if err := os.Remove(debs[0]); err != nil {
		return nil, fmt.Errorf("vmguest: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "deb"), []byte(filepath.Base(debs[0])+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("vmguest: %w", err)
	}
	if _, err := openKernel(tmp); err != nil {
		return nil, err
	}
	os.RemoveAll(dir) // a broken earlier unpack
	if err := os.Rename(tmp, dir); err != nil {
		// Another build may have put the same kernel there meanwhile.
		if k, openErr := openKernel(dir); openErr == nil {
			return k, nil
		}
		return nil, fmt.Errorf("vmguest: %w", err)
	}
	return openKernel(dir)
}

// kernelPackage asks apt which versioned package the cloud metapackage
// currently depends on.
func kernelPackage(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", "--important", kernelMeta).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("apt-cache depends %s: %w: %s", kernelMeta, err, strings.TrimSpace(string(out)))
	}
	m := dependsRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("apt-cache depends %s names no cloud kernel: %s", kernelMeta, strings.TrimSpace(string(out)))
	}
	return string(m[1]), nil
}

// openKernel checks an unpacked package directory (with its "deb" marker,
// written last) and finds the kernel version in it.
func openKernel(dir string) (*kernelTree, error) {
	if _, err := os.Stat(filepath.Join(dir, "deb")); err != nil {
		return nil, fmt.Errorf("vmguest: %s is not a complete kernel unpack: %w", dir, err)
	}
	root := filepath.Join(dir, "root")
	vers, _ := filepath.Glob(filepath.Join(root, "lib", "modules", "*"))
	if len(vers) != 1 {
		return nil, fmt.Errorf("vmguest: %s holds %d module trees, want 1", root, len(vers))
	}
	k := &kernelTree{pkg: filepath.Base(dir), version: filepath.Base(vers[0]), root: root}
	if _, err := os.Stat(k.vmlinuz()); err != nil {
		return nil, fmt.Errorf("vmguest: %w", err)
	}
	return k, nil
}

// moduleName normalises a module file or dependency name the way the
// kernel does ("virtio-rng.ko" and "virtio_rng" are the same module).
func moduleName(s string) string {
	s = strings.TrimSuffix(filepath.Base(s), ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

// resolveModules returns the .ko files (relative to the module directory)
// to load for the wanted modules, dependencies first. Debian's package has
// no modules.dep (depmod runs at install time), so dependencies are read
// from each module's .modinfo section ("depends=a,b"). Modules built into
// the kernel (modules.builtin) need no file and are left out.
func resolveModules(modDir string, wanted []string) ([]string, error) {
	files := map[string]string{}
	err := filepath.WalkDir(filepath.Join(modDir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			rel, _ := filepath.Rel(modDir, p)
			files[moduleName(p)] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("vmguest: modules: %w", err)
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(modDir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			builtin[moduleName(l)] = true
		}
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("vmguest: module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		case 2:
			return nil
		}
		rel, ok := files[name]
		if !ok {
			if builtin[name] {
				state[name] = 2
				return nil
			}
			return fmt.Errorf("vmguest: module %s (%s) is neither in %s nor built in", name, strings.Join(append(chain, name), " <- "), modDir)
		}
		state[name] = 1
		deps, err := moduleDepends(filepath.Join(modDir, rel))
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, rel)
		return nil
	}
	for _, w := range wanted {
		if err := visit(moduleName(w), nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleDepends reads the depends= entry of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("vmguest: module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("vmguest: module %s has no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("vmguest: module %s: %w", path, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d = strings.TrimSpace(d); d != "" {
					deps = append(deps, moduleName(d))
				}
			}
			return deps, nil
		}
	}
	return nil, nil
}
