package vmguest

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// bootDeadline bounds boot to the ready line: seconds under KVM, a few
// more under TCG, generous for a loaded 2-core CI machine.
const bootDeadline = 3 * time.Minute

const testNICs = 2

func TestKernelFormBoots(t *testing.T) {
	requireQEMU(t)
	imgs := buildImages(t)
	n := newTestNet(t, testNICs)
	v := startVM(t, n, "-kernel", imgs.Kernel, "-initrd", imgs.Initrd, "-append", Cmdline)
	exerciseGuest(t, n, v, "kernel")
}

func TestDiskFormBoots(t *testing.T) {
	requireQEMU(t)
	imgs := buildImages(t)
	n := newTestNet(t, testNICs)
	// snapshot=on: QEMU writes to a temporary overlay, never to the image.
	v := startVM(t, n, "-drive", "file="+imgs.Disk+",format=qcow2,if=virtio,snapshot=on")
	exerciseGuest(t, n, v, "disk")
}

// exerciseGuest checks everything the guest promises, then powers it
// down over QMP.
func exerciseGuest(t *testing.T, n *testNet, v *testVM, form string) {
	ctx, cancel := context.WithTimeout(context.Background(), bootDeadline)
	defer cancel()
	boot, err := v.waitLine(ctx, ReadyLine)
	if err != nil {
		t.Fatal(err)
	}
	rss, err := v.rssKiB()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s form: ready line %.2fs after QEMU started; QEMU VmRSS %d KiB (-m 128M)", form, boot.Seconds(), rss)
	t.Logf("%s form console:\n%s", form, v.console())

	// Every NIC leased an address from the test's DHCP server, and the
	// guest said so before the ready line.
	var ips []string
	for i := 0; i < testNICs; i++ {
		ip := n.leaseFor(guestMAC(i))
		if ip == "" {
			t.Fatalf("dnsmasq leased nothing to NIC %d (%s)", i, guestMAC(i))
		}
		ips = append(ips, ip)
		if !strings.Contains(v.console(), ip+"/24") {
			t.Errorf("console does not report NIC %d's address %s", i, ip)
		}
	}

	// HTTP answers on every leased address, from the guest.
	for _, ip := range ips {
		body, err := n.httpGet(ctx, "http://"+ip+"/")
		if err != nil {
			t.Fatalf("GET from the test namespace: %v", err)
		}
		if !strings.HasPrefix(body, "evelet-guest ") || !strings.Contains(body, ips[0]) || !strings.Contains(body, ips[1]) {
			t.Errorf("GET http://%s/ = %q, want evelet-guest <hostname> with both addresses", ip, body)
		}
	}

	// Guest agent.
	q := syncedQGA(ctx, t, v)
	defer q.Close()
	if err := q.call(ctx, "guest-ping", nil, nil); err != nil {
		t.Fatal(err)
	}
	var info struct {
		Supported []struct {
			Name string `json:"name"`
		} `json:"supported_commands"`
	}
	if err := q.call(ctx, "guest-info", nil, &info); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range info.Supported {
		names = append(names, c.Name)
	}
	if !strings.Contains(" "+strings.Join(names, " ")+" ", " guest-exec ") {
		t.Errorf("guest-info lists %v, no guest-exec", names)
	}
	out, _, code, err := q.exec(ctx, "/bin/sh", []string{"-c", "echo hi; exit 3"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if out != "hi\n" || code != 3 {
		t.Errorf("guest-exec sh -c 'echo hi; exit 3' = %q, exit %d; want \"hi\\n\", exit 3", out, code)
	}
	out, errOut, code, err := q.exec(ctx, "sh", []string{"-c", "cat; echo oops >&2"}, []byte("from stdin"))
	if err != nil {
		t.Fatal(err)
	}
	if out != "from stdin" || errOut != "oops\n" || code != 0 {
		t.Errorf("guest-exec with input-data = out %q err %q exit %d", out, errOut, code)
	}
	// Refusals: a missing program and an unknown command are errors, and
	// the agent keeps answering after them.
	if _, _, _, err := q.exec(ctx, "/no/such/program", nil, nil); err == nil || !strings.Contains(err.Error(), "GenericError") {
		t.Errorf("guest-exec of a missing program: err = %v, want a GenericError", err)
	}
	if err := q.call(ctx, "guest-file-open", map[string]string{"path": "/etc/passwd"}, nil); err == nil || !strings.Contains(err.Error(), "CommandNotFound") {
		t.Errorf("guest-file-open: err = %v, want CommandNotFound", err)
	}
	if err := q.call(ctx, "guest-exec-status", map[string]int{"pid": 999999}, nil); err == nil {
		t.Errorf("guest-exec-status of an unknown pid: no error")
	}
	if err := q.call(ctx, "guest-ping", nil, nil); err != nil {
		t.Fatalf("agent stopped answering after refusals: %v", err)
	}
	// A client that leaves mid-command does not wedge the agent for the
	// next one.
	if _, err := q.c.Write([]byte(`{"execute":"guest-pi`)); err != nil {
		t.Fatal(err)
	}
	q.Close()
	q2 := syncedQGA(ctx, t, v)
	if err := q2.call(ctx, "guest-ping", nil, nil); err != nil {
		t.Fatalf("second agent client: %v", err)
	}
	q2.Close()

	// ACPI power button: QEMU exits when the guest powers off.
	downStart := time.Now()
	if err := qmpCommand(ctx, v.qmp, "system_powerdown"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-v.exited:
		if v.waitErr != nil {
			t.Errorf("qemu exited with %v after system_powerdown", v.waitErr)
		}
		t.Logf("%s form: QEMU exited %.2fs after system_powerdown", form, time.Since(downStart).Seconds())
	case <-time.After(time.Minute):
		t.Fatal("qemu still running a minute after system_powerdown")
	}
}

// syncedQGA connects to the guest agent and syncs with it.
func syncedQGA(ctx context.Context, t *testing.T, v *testVM) *qgaClient {
	t.Helper()
	q, err := dialQGA(ctx, v.qga)
	if err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return q.sync(attempt) == nil, nil
	}); err != nil {
		q.Close()
		t.Fatalf("guest-sync-delimited never answered: %v", err)
	}
	return q
}

// TestGuestReportsMissingLeaseAndShutsDown boots with one NIC whose tap is
// on no network: the ready line still comes after the bounded DHCP wait,
// naming the NIC that got no address; the other NIC serves HTTP with the
// host name from the kernel command line; guest-shutdown powers off.
func TestGuestReportsMissingLeaseAndShutsDown(t *testing.T) {
	requireQEMU(t)
	imgs := buildImages(t)
	n := newTestNet(t, 2)
	run(t, "ip", "-n", n.ns, "link", "set", n.taps[1], "nomaster")
	v := startVM(t, n, "-kernel", imgs.Kernel, "-initrd", imgs.Initrd,
		"-append", Cmdline+" evelet.dhcp_timeout=5 evelet.hostname=h3-test-guest")
	ctx, cancel := context.WithTimeout(context.Background(), bootDeadline)
	defer cancel()
	if _, err := v.waitLine(ctx, ReadyLine); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(v.console(), "evelet-guest: dhcp eth1: no lease after 5s") {
		t.Errorf("console does not name eth1 as the NIC without a lease:\n%s", v.console())
	}
	ip := n.leaseFor(guestMAC(0))
	if ip == "" {
		t.Fatal("NIC 0 got no lease")
	}
	if n.leaseFor(guestMAC(1)) != "" {
		t.Fatal("the isolated NIC got a lease")
	}
	body, err := n.httpGet(ctx, "http://"+ip+"/")
	if err != nil {
		t.Fatal(err)
	}
	if want := "evelet-guest h3-test-guest " + ip + "\n"; body != want {
		t.Errorf("GET / = %q, want %q", body, want)
	}
	q := syncedQGA(ctx, t, v)
	defer q.Close()
	out, _, code, err := q.exec(ctx, "hostname", nil, nil)
	if err != nil || out != "h3-test-guest\n" || code != 0 {
		t.Errorf("guest-exec hostname = %q, %d, %v", out, code, err)
	}
	if err := q.call(ctx, "guest-shutdown", map[string]string{"mode": "sideways"}, nil); err == nil || !strings.Contains(err.Error(), "unknown mode") {
		t.Errorf("guest-shutdown with a bad mode: err = %v", err)
	}
	// No reply on success, like qemu-ga: the guest goes away.
	if _, err := q.c.Write([]byte(`{"execute":"guest-shutdown"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-v.exited:
		if v.waitErr != nil {
			t.Errorf("qemu exited with %v after guest-shutdown", v.waitErr)
		}
	case <-time.After(time.Minute):
		t.Fatal("qemu still running a minute after guest-shutdown")
	}
}
