package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/images/vmguest/vmguesttest"
	"github.com/lf-edge/evelet/tests/containerd"
)

const largeDiskRef = "evelet.local/vm-large-disk:1"

// largeDiskSize is the virtual size of the large test disk.
const largeDiskSize = 20 << 30

// largeDiskImage builds a containerDisk whose /disk/guest.raw is the test
// guest's disk as raw, followed by holes up to 20 GiB. The layer is made
// by GNU tar --sparse in the POSIX format (PAX sparse 1.0, which Go's
// archive/tar reads as the holes' zeros): the layer carries the data, not
// 20 GiB of zeros. The image is written as a docker-archive (gzip layer)
// with go-containerregistry; no Docker engine.
func largeDiskImage(t *testing.T, dir string) (tarPath, rawDisk string) {
	t.Helper()
	imgs := vmguesttest.Images(t)
	work := t.TempDir()
	disk := filepath.Join(work, "disk", "guest.raw")
	os.MkdirAll(filepath.Dir(disk), 0o755)
	if out, err := exec.Command("qemu-img", "convert", "-O", "raw", imgs.Disk, disk).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v %s", err, out)
	}
	if err := os.Truncate(disk, largeDiskSize); err != nil {
		t.Fatal(err)
	}
	layerTar := filepath.Join(work, "layer.tar")
	if out, err := exec.Command("tar", "--sparse", "--format=posix", "--owner=0", "--group=0", "-C", work, "-cf", layerTar, "disk").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	if st, err := os.Stat(layerTar); err != nil || st.Size() > 256<<20 {
		t.Fatalf("the sparse layer tarball: %v, %d bytes; want the data only", err, st.Size())
	}
	layerBytes, err := os.ReadFile(layerTar)
	if err != nil {
		t.Fatal(err)
	}
	img, err := images.SingleLayerImage(layerBytes, "amd64", "TestVMLargeDisk", v1.Config{})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "vm-large-disk.tar")
	if err := images.WriteTarball(largeDiskRef, img, p); err != nil {
		t.Fatal(err)
	}
	return p, disk
}

// importNoUnpack imports an image into the shared containerd without
// unpacking it into the snapshotter: the VM backend reads the layer blobs,
// and containerd's unpack would write the 20 GiB of zeros.
func importNoUnpack(t *testing.T, ctx context.Context, c *containerd.Containerd, tarPath, ref string) {
	t.Helper()
	if out, err := exec.CommandContext(ctx, "ctr", "--address", c.Socket(), "--namespace", containerd.Namespace, "images", "import", "--no-unpack", tarPath).CombinedOutput(); err != nil {
		t.Fatalf("ctr images import: %v %s", err, out)
	}
	t.Cleanup(func() {
		exec.Command("ctr", "--address", c.Socket(), "--namespace", containerd.Namespace, "images", "rm", ref).Run()
	})
	conn, err := c.DialCRI()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	is := runtimeapi.NewImageServiceClient(conn)
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		st, err := is.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		return err == nil && st.GetImage() != nil, nil
	})
	if err != nil {
		t.Fatalf("the CRI does not list %s after its import: %v", ref, err)
	}
}

// TestVMLargeDisk: a VM pod whose image holds a 20 GiB raw disk reaches
// Running with its guest's ready line through the real kubelet (issue 21
// item 12), and its extracted disk takes what its data takes, not 20 GiB.
// The extraction is cut by a kill -9 of the agent once the disk's data is
// written (the rest is reading the holes' zeros, about 15 s here): the
// restarted agent resumes it, keeping what was written (the agent's log
// says how much it kept and wrote), and the result is the image's disk.
func TestVMLargeDisk(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 15*time.Minute)
	cs := env.cp.Client()
	started := time.Now()
	tarPath, raw := largeDiskImage(t, t.TempDir())
	st, _ := os.Stat(tarPath)
	importNoUnpack(t, ctx, env.ctrd, tarPath, largeDiskRef)
	t.Logf("image with a %d GiB raw disk: %d MiB as a docker archive, built and imported in %v", largeDiskSize>>30, st.Size()>>20, time.Since(started).Round(time.Millisecond))

	d := vmDevice(t, ctx, "edge-vm-large", "33333333-4444-4555-8666-77777777777c", nil)
	created := time.Now()
	p := vmPod("vm-large", largeDiskRef, nil)
	if _, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, context.Background(), cs, p.Name) })

	// Cut the extraction once the disk's data is in the .tmp.
	var atKill int64
	waitFor(t, 2*time.Minute, "extraction under way with the disk's data written", func() (bool, error) {
		m, _ := filepath.Glob(filepath.Join(d.stateDir(), "vm", "images", "*.tmp", "files", "guest.raw"))
		if len(m) != 1 {
			return false, fmt.Errorf("extracting: %v", m)
		}
		atKill = allocatedBytes(m[0])
		return atKill >= 16<<20, fmt.Errorf("%d bytes written", atKill)
	})
	d.kill9()
	if m, _ := filepath.Glob(filepath.Join(d.stateDir(), "vm", "images", "*", "guest.raw")); len(m) != 0 {
		t.Fatalf("the extraction finished before the agent was killed: %v", m)
	}
	t.Logf("agent killed during the extraction, %d MiB of the disk written", atKill>>20)
	d.start()
	waitNodeReady(t, "edge-vm-large", 3*time.Minute)
	var toRunning time.Duration
	waitFor(t, 10*time.Minute, "vm-large Running", func() (bool, error) {
		got, err := cs.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		toRunning = time.Since(created)
		return got.Status.Phase == "Running", fmt.Errorf("phase %s %v", got.Status.Phase, got.Status.ContainerStatuses)
	})
	waitVMReady(t, ctx, p.Name)
	toReady := time.Since(created)

	// The extracted disk: 20 GiB long, sparse.
	var disk string
	entries, _ := filepath.Glob(filepath.Join(d.stateDir(), "vm", "images", "*", "guest.raw"))
	if len(entries) != 1 {
		t.Fatalf("extracted disks: %v, want one guest.raw", entries)
	}
	disk = entries[0]
	var fst syscall.Stat_t
	if err := syscall.Stat(disk, &fst); err != nil {
		t.Fatal(err)
	}
	if fst.Size != largeDiskSize {
		t.Errorf("extracted disk is %d bytes, want %d", fst.Size, int64(largeDiskSize))
	}
	used := fst.Blocks * 512
	if used > 256<<20 {
		t.Errorf("the extracted 20 GiB disk takes %d MiB on the device, want only its data", used>>20)
	}
	// The extracted disk is the image's: its data, then nothing but holes.
	if err := sameSparse(raw, disk); err != nil {
		t.Error(err)
	}
	// The resumed run kept what the killed one wrote.
	var extract, resumed string
	if b, err := os.ReadFile(d.logPath); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			switch {
			case strings.Contains(l, "VM disk extracted"): // the only image this device extracts
				extract = l
			case strings.Contains(l, "VM disk extraction resumed"):
				resumed = l
			}
		}
	}
	kept, written := logInt(resumed, "kept"), logInt(resumed, "written")
	if resumed == "" || kept < atKill || written > used-atKill+(1<<20) {
		t.Errorf("resumed extraction: %q; want it to keep the %d bytes written before the kill and write at most the %d after", resumed, atKill, used-atKill)
	}
	t.Logf("20 GiB raw disk (TCG, extraction cut by a kill -9 of the agent): create -> Running %v, create -> guest ready line %v; extracted file %d GiB long, %d MiB on disk; %s; %s",
		toRunning.Round(time.Millisecond), toReady.Round(time.Millisecond), fst.Size>>30, used>>20, resumed, extract)
}

// logInt reads key=N from a logrus text line; -1 without it.
func logInt(line, key string) int64 {
	m := regexp.MustCompile(`\b` + key + `=(\d+)`).FindStringSubmatch(line)
	if m == nil {
		return -1
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// sameSparse compares two 20 GiB disks whose data is in their first
// 64 MiB: the same size, the same first 64 MiB, and no data in either past
// them (SEEK_DATA), without reading gigabytes of holes.
func sameSparse(a, b string) error {
	const head = 64 << 20
	var heads [2][]byte
	for i, p := range []string{a, b} {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		if st, _ := f.Stat(); st.Size() != largeDiskSize {
			return fmt.Errorf("%s is %d bytes, want %d", p, st.Size(), int64(largeDiskSize))
		}
		heads[i] = make([]byte, head)
		if _, err := f.ReadAt(heads[i], 0); err != nil {
			return err
		}
		if off, err := unix.Seek(int(f.Fd()), head, unix.SEEK_DATA); err != unix.ENXIO {
			return fmt.Errorf("%s has data at %d, past its first %d MiB: %v", p, off, head>>20, err)
		}
	}
	if !bytes.Equal(heads[0], heads[1]) {
		return fmt.Errorf("%s differs from the image's disk %s in its first %d MiB", b, a, head>>20)
	}
	return nil
}
