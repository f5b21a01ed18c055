// Command service-image writes evelet's EVE service image (images.WriteService)
// from per-architecture build directories, as `make image` prepares them:
//
//	service-image -ref REF -out DIR ARCH=BUILDDIR...
//
// where BUILDDIR/bin holds evelet's static binaries, BUILDDIR/cni the CNI
// plugins and BUILDDIR/pause the static pause program of ARCH.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/lf-edge/evelet/images"
)

func main() {
	ref := flag.String("ref", "docker.io/lfedge/evelet:dev", "reference the image is tagged with")
	out := flag.String("out", "_output/image", "output directory")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: service-image -ref REF -out DIR ARCH=BUILDDIR...")
		os.Exit(2)
	}
	var arches []images.ServiceArch
	for _, arg := range flag.Args() {
		arch, dir, ok := strings.Cut(arg, "=")
		if !ok {
			fail(fmt.Errorf("%q: want ARCH=BUILDDIR", arg))
		}
		a, err := archFrom(arch, dir)
		if err != nil {
			fail(err)
		}
		arches = append(arches, a)
	}
	digest, err := images.WriteService(*ref, arches, *out)
	if err != nil {
		fail(err)
	}
	fmt.Printf("%s %s (%s)\n", *ref, digest, filepath.Join(*out, "evelet-service.oci"))
}

func archFrom(arch, dir string) (images.ServiceArch, error) {
	a := images.ServiceArch{Arch: arch, Bin: map[string]string{}, CNI: map[string]string{}}
	for sub, m := range map[string]map[string]string{"bin": a.Bin, "cni": a.CNI} {
		ents, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			return a, err
		}
		for _, e := range ents {
			if e.Type().IsRegular() {
				m[e.Name()] = filepath.Join(dir, sub, e.Name())
			}
		}
	}
	bin, err := os.ReadFile(filepath.Join(dir, "pause"))
	if err != nil {
		return a, err
	}
	img, err := images.PauseImage(bin, arch)
	if err != nil {
		return a, err
	}
	a.PauseTar = filepath.Join(dir, "pause.tar")
	return a, images.WriteTarball(images.PauseRef, img, a.PauseTar)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "service-image:", err)
	os.Exit(1)
}
