package vm

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestSizeGuest(t *testing.T) {
	for _, tc := range []struct {
		quota, period, mem int64
		vcpus, memMiB      int
		err                string
	}{
		{0, 0, 0, DefaultVCPUs, DefaultGuestMemoryMiB, ""},
		{150000, 100000, 512 * mib, 2, 512, ""},
		{100000, 100000, 64 * mib, 1, 64, ""},
		{0, 0, 63 * mib, 0, 0, "below the minimum guest RAM"},
		{1700000, 100000, 0, 0, 0, "at most 16"},
	} {
		v, m, err := sizeGuest(&runtimeapi.LinuxContainerResources{CpuQuota: tc.quota, CpuPeriod: tc.period, MemoryLimitInBytes: tc.mem})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%+v: %v, want %q", tc, err, tc.err)
			}
			continue
		}
		if err != nil || v != tc.vcpus || m != tc.memMiB {
			t.Errorf("%+v: %d vCPUs %d MiB %v", tc, v, m, err)
		}
	}
	if l := cgroupMemoryLimit(&runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 256 * mib}); l != (256+QEMUOverheadMiB)*mib {
		t.Errorf("cgroup limit %d", l)
	}
}

// TestApplyLayer: only regular files directly under disk/ come out of an
// image; links, devices, deeper paths and other directories do not, and
// whiteouts of a later layer delete.
func TestApplyLayer(t *testing.T) {
	layer := func(hs ...tar.Header) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range hs {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeReg {
				h.Size = int64(len(h.Name))
			}
			tw.WriteHeader(&h)
			if h.Typeflag == tar.TypeReg {
				tw.Write([]byte(h.Name))
			}
		}
		tw.Close()
		return buf.Bytes()
	}
	dir := t.TempDir()
	l1 := layer(
		tar.Header{Name: "disk/", Typeflag: tar.TypeDir},
		tar.Header{Name: "disk/a.qcow2", Typeflag: tar.TypeReg},
		tar.Header{Name: "./disk/b.raw", Typeflag: tar.TypeReg},
		tar.Header{Name: "disk/link", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"},
		tar.Header{Name: "disk/hard", Typeflag: tar.TypeLink, Linkname: "etc/passwd"},
		tar.Header{Name: "disk/sub/c.raw", Typeflag: tar.TypeReg},
		tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg},
		tar.Header{Name: "disk/../etc/x", Typeflag: tar.TypeReg},
	)
	l2 := layer(tar.Header{Name: "disk/.wh.b.raw", Typeflag: tar.TypeReg})
	for _, l := range [][]byte{l1, l2} {
		if err := applyLayer(bytes.NewReader(l), "application/vnd.oci.image.layer.v1.tar", dir); err != nil {
			t.Fatal(err)
		}
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "a.qcow2" {
		t.Errorf("extracted %v, want only a.qcow2", names)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "etc")); err == nil {
		t.Error("a path outside disk/ was written")
	}
}

func TestValidID(t *testing.T) {
	if !validID(newID()) {
		t.Error("own ID refused")
	}
	for _, id := range []string{"", "..", "../../etc/passwd", strings.Repeat("A", idLen), strings.Repeat("0", idLen-1) + "/", strings.Repeat("0", 64)} {
		if validID(id) {
			t.Errorf("%q accepted", id)
		}
	}
}

// TestQEMUArgs: the guest gets the overlay or the kernel, the sockets in
// its directory, the pod's taps with their MACs, and nothing by default.
func TestQEMUArgs(t *testing.T) {
	c := &containerState{Metadata: &runtimeapi.ContainerMetadata{Name: "g,uest"}, VCPUs: 2, MemoryMiB: 300, Accel: "tcg", UID: 3000000007}
	a := strings.Join(qemuArgs(c, "/s/vm/x", []NIC{{Tap: "vmtap0", MAC: "02:00:00:00:00:01"}}), " ")
	for _, want := range []string{"-nodefaults", "-no-user-config", "-display none", "-accel tcg,tb-size=16", "-smp 2", "-m 300", "guest=g_uest",
		"file=/s/vm/x/overlay.qcow2,format=qcow2", "unix:/s/vm/x/qmp.sock", "path=/s/vm/x/qga.sock", "name=org.qemu.guest_agent.0",
		"tap,id=net0,ifname=vmtap0,script=no,downscript=no", "mac=02:00:00:00:00:01", "-sandbox on",
		// QEMU drops to the VM's uid, paused until the supervisor resumes it
		// on its monitor; a write error pauses the guest for the supervisor.
		"-runas 3000000007:3000000007", "-S ", "path=/s/vm/x/vmm.qmp,server=on,wait=off", "-mon chardev=vmm,mode=control",
		"elevateprivileges=allow,spawn=deny", "werror=stop"} {
		if !strings.Contains(a, want) {
			t.Errorf("QEMU args lack %q: %s", want, a)
		}
	}
	c.Boot = bootSpec{Kernel: "/k", Initrd: "/i", Cmdline: "console=ttyS0"}
	a = strings.Join(qemuArgs(c, "/s/vm/x", nil), " ")
	if !strings.Contains(a, "-kernel /k -initrd /i -append console=ttyS0") || strings.Contains(a, "overlay") || strings.Contains(a, "-netdev") {
		t.Errorf("kernel boot args: %s", a)
	}
}
