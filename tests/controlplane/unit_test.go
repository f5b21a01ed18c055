package controlplane

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/kubernetes/cmd/kubeadm/app/util/pubkeypin"
)

// fakeBinDir makes a directory with every binary a control plane needs;
// each is a shell script with the given body (default: exit 0).
func fakeBinDir(t *testing.T, bodies map[string]string) string {
	t.Helper()
	d := t.TempDir()
	for _, b := range Binaries {
		body := bodies[b]
		if body == "" {
			body = "exit 0"
		}
		if err := os.WriteFile(filepath.Join(d, b), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	certs, err := certutil.CertsFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

func TestPreparePKI(t *testing.T) {
	dir := t.TempDir()
	c, err := Prepare(Options{Dir: dir, BinDir: fakeBinDir(t, nil), ServiceCIDR: "10.43.0.0/16",
		ExtraSANs: []string{"10.0.2.2", "cp.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Processes()) != 0 {
		t.Fatalf("Prepare started processes: %v", c.Processes())
	}
	if !strings.HasPrefix(c.URL(), "https://127.0.0.1:") || c.URL() != c.AdvertiseURL() {
		t.Errorf("URL %s, AdvertiseURL %s", c.URL(), c.AdvertiseURL())
	}

	// Every secret file is private.
	err = filepath.Walk(c.Dir(), func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		if info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, info.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	ca := readCert(t, filepath.Join(c.Dir(), "pki", "ca.crt"))
	if !ca.IsCA || !bytes.Equal(c.CACertPEM(), encodeCert(ca)) {
		t.Fatal("ca.crt is not the CA CACertPEM returns")
	}
	if c.CAPin() != pubkeypin.Hash(ca) || !strings.HasPrefix(c.CAPin(), "sha256:") || len(c.CAPin()) != 7+64 {
		t.Errorf("CAPin %q", c.CAPin())
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)

	srv := readCert(t, filepath.Join(c.Dir(), "pki", "apiserver.crt"))
	for _, name := range []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc.cluster.local", "cp.example", "127.0.0.1", "::1", "10.43.0.1", "10.0.2.2"} {
		if _, err := srv.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("apiserver certificate for %s: %v", name, err)
		}
	}
	kc := readCert(t, filepath.Join(c.Dir(), "pki", "apiserver-kubelet-client.crt"))
	if kc.Subject.CommonName != "kube-apiserver-kubelet-client" || fmt.Sprint(kc.Subject.Organization) != "[system:masters]" {
		t.Errorf("kubelet client subject %v", kc.Subject)
	}
	if _, err := kc.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("kubelet client certificate: %v", err)
	}
	for _, f := range []string{"sa.key", "sa.pub"} {
		if _, err := os.Stat(filepath.Join(c.Dir(), "pki", f)); err != nil {
			t.Error(err)
		}
	}

	for file, want := range map[string]string{
		"admin.conf":              "CN=kubernetes-admin,O=system:masters",
		"controller-manager.conf": "CN=system:kube-controller-manager",
		"scheduler.conf":          "CN=system:kube-scheduler",
	} {
		cfg, err := clientcmd.LoadFromFile(filepath.Join(c.Dir(), file))
		if err != nil {
			t.Fatal(err)
		}
		kctx := cfg.Contexts[cfg.CurrentContext]
		if cfg.Clusters[kctx.Cluster].Server != c.URL() {
			t.Errorf("%s server %s", file, cfg.Clusters[kctx.Cluster].Server)
		}
		certs, err := certutil.ParseCertsPEM(cfg.AuthInfos[kctx.AuthInfo].ClientCertificateData)
		if err != nil {
			t.Fatal(err)
		}
		if got := certs[0].Subject.String(); got != want {
			t.Errorf("%s subject %s, want %s", file, got, want)
		}
	}
	if c.AdminKubeconfig() != filepath.Join(c.Dir(), "admin.conf") {
		t.Errorf("AdminKubeconfig %s", c.AdminKubeconfig())
	}

	// A second Prepare on the same directory keeps the CA, on new ports.
	c2, err := Prepare(Options{Dir: dir, BinDir: c.BinDir()})
	if err != nil {
		t.Fatal(err)
	}
	if c2.CAPin() != c.CAPin() {
		t.Errorf("CA not reused: %s then %s", c.CAPin(), c2.CAPin())
	}
}

func TestPrepareAdvertise(t *testing.T) {
	c, err := Prepare(Options{Dir: t.TempDir(), BinDir: fakeBinDir(t, nil), AdvertiseAddress: "10.11.12.13", BindAddress: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(c.URL(), "https://"))
	if c.AdvertiseURL() != "https://10.11.12.13:"+port {
		t.Errorf("AdvertiseURL %s (URL %s)", c.AdvertiseURL(), c.URL())
	}
	args := strings.Join(c.apiserverArgs(), " ")
	if !strings.Contains(args, "--advertise-address=10.11.12.13") || strings.Contains(args, "--endpoint-reconciler-type") {
		t.Errorf("apiserver args: %s", args)
	}
	v6, err := Prepare(Options{Dir: t.TempDir(), BinDir: c.BinDir(), AdvertiseAddress: "::1"})
	if err != nil {
		t.Fatal(err)
	}
	args = strings.Join(v6.apiserverArgs(), " ")
	if !strings.HasPrefix(v6.URL(), "https://[::1]:") || v6.URL() != v6.AdvertiseURL() ||
		!strings.Contains(args, "--bind-address=::1") || !strings.Contains(args, "--endpoint-reconciler-type=none") {
		t.Errorf("::1: URL %s, AdvertiseURL %s, args %s", v6.URL(), v6.AdvertiseURL(), args)
	}
	if _, err := Prepare(Options{Dir: t.TempDir(), BinDir: c.BinDir(), AdvertiseAddress: "0.0.0.0"}); err == nil {
		t.Error("Prepare accepted an unspecified advertise address")
	}
	if _, err := Prepare(Options{Dir: t.TempDir(), BinDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "kube-apiserver") {
		t.Errorf("Prepare with an empty BinDir: %v", err)
	}
}

func TestRunReportsLogTailWhenAComponentDies(t *testing.T) {
	bin := fakeBinDir(t, map[string]string{"etcd": `echo "fake etcd: boom, cannot start" >&2; exit 3`})
	c, err := Prepare(Options{Dir: t.TempDir(), BinDir: bin, StartTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Run(context.Background())
	if err == nil {
		t.Fatal("Run succeeded with a failing etcd")
	}
	t.Logf("Run: %v", err)
	for _, want := range []string{"etcd exited during startup", "exit status 3", "fake etcd: boom", "tail of"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q", want)
		}
	}
	if p := c.Processes(); len(p) != 0 {
		t.Errorf("processes left: %v", p)
	}
}

func TestRunTimeoutKillsTheComponent(t *testing.T) {
	// A "daemon" that never gets healthy and ignores SIGTERM, with a child.
	bin := fakeBinDir(t, map[string]string{"etcd": `trap '' TERM; sleep 300 & echo "child $!"; while :; do sleep 1; done`})
	c, err := Prepare(Options{Dir: t.TempDir(), BinDir: bin, StartTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c.stopGrace = time.Second
	// Catch the pid while it runs.
	pids := make(chan int, 1)
	go func() {
		for i := 0; i < 100; i++ {
			if p, ok := c.Processes()[Etcd]; ok {
				pids <- p
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		pids <- 0
	}()
	start := time.Now()
	err = c.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "not healthy") {
		t.Fatalf("Run: %v", err)
	}
	pid := <-pids
	if pid == 0 {
		t.Fatal("never saw the etcd process")
	}
	if PIDAlive(pid) {
		t.Errorf("pid %d still alive", pid)
	}
	if _, err := os.Stat(filepath.Join(c.Dir(), "pids", "etcd.pid")); !os.IsNotExist(err) {
		t.Errorf("pid file: %v", err)
	}
	tail := logTail(c.LogPath(Etcd))
	f := strings.Fields(tail[strings.Index(tail, "child "):])
	child, _ := strconv.Atoi(f[1])
	if child == 0 || PIDAlive(child) {
		t.Errorf("the component's child %d survived (log: %s)", child, tail)
	}
	t.Logf("timeout + SIGTERM-ignoring process: Run returned after %v", time.Since(start).Round(time.Millisecond))
	if err := c.Stop(); err != nil {
		t.Error(err)
	}
}

func TestKillLeftovers(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "pids"), 0o700); err != nil {
		t.Fatal(err)
	}
	// A leftover: its command line refers to dir, and it has a child.
	leftover := exec.Command("sh", "-c", "sleep 300 & wait; :", filepath.Join(dir, "etcd"))
	leftover.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A stranger whose pid a stale pid file names: must survive.
	stranger := exec.Command("sleep", "300")
	for _, cmd := range []*exec.Cmd{leftover, stranger} {
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go cmd.Wait()
		defer cmd.Process.Kill()
	}
	if err := writePIDFile(filepath.Join(dir, "pids", "etcd.pid"), leftover.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if err := writePIDFile(filepath.Join(dir, "pids", "kube-apiserver.pid"), stranger.Process.Pid); err != nil {
		t.Fatal(err)
	}
	var child int
	for i := 0; i < 100 && child == 0; i++ {
		child = childOf(leftover.Process.Pid)
		time.Sleep(10 * time.Millisecond)
	}
	if child == 0 {
		t.Fatal("leftover's child did not start")
	}
	if err := KillLeftovers(dir); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := WaitPIDsGone(ctx, leftover.Process.Pid, child); err != nil {
		t.Error(err)
	}
	if !PIDAlive(stranger.Process.Pid) {
		t.Error("KillLeftovers killed a process that was not ours")
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "pids", "*")); len(m) != 0 {
		t.Errorf("pid files left: %v", m)
	}
}

// childOf finds a live child of pid.
func childOf(pid int) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) && PIDAlive(p) {
			return p
		}
	}
	return 0
}

func TestFirstServiceIP(t *testing.T) {
	for cidr, want := range map[string]string{
		"10.96.0.0/16":     "10.96.0.1",
		"10.96.5.7/12":     "10.96.0.1",
		"fd00:10:96::/112": "fd00:10:96::1",
	} {
		ip, err := firstServiceIP(cidr)
		if err != nil || ip.String() != want {
			t.Errorf("firstServiceIP(%s) = %v, %v; want %s", cidr, ip, err, want)
		}
	}
	for _, bad := range []string{"10.96.0.0", "10.0.0.1/32", "nonsense"} {
		if _, err := firstServiceIP(bad); err == nil {
			t.Errorf("firstServiceIP(%s) accepted", bad)
		}
	}
}

func TestLogTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.log")
	var b strings.Builder
	b.WriteString(startMarker + " old run\nE0101 00:00:00.000 old error\n")
	b.WriteString(startMarker + " new run\n")
	b.WriteString("E0101 00:00:01.000 early error\n")
	for i := 0; i < 40; i++ {
		fmt.Fprintf(&b, "I0101 line %d\n", i)
	}
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	tail := logTail(p)
	if strings.Contains(tail, "old error") || !strings.Contains(tail, "early error") ||
		!strings.Contains(tail, "line 39") || strings.Contains(tail, "line 3\n") {
		t.Errorf("tail:\n%s", tail)
	}
}

func TestLinePrefixer(t *testing.T) {
	var out bytes.Buffer
	w := &linePrefixer{prefix: "etcd: ", out: &out}
	w.Write([]byte("one\ntw"))
	w.Write([]byte("o\nthree"))
	w.flush()
	if got := out.String(); got != "etcd: one\netcd: two\netcd: three\n" {
		t.Errorf("got %q", got)
	}
}

func TestFreePorts(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	busy := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ports, err := freePorts([]portWish{{"127.0.0.1", busy}, {"127.0.0.1", 0}, {"127.0.0.1", 0}, {"0.0.0.0", 0}})
	if err != nil {
		t.Fatal(err)
	}
	if ports[0] != busy {
		t.Errorf("wished port %d, got %d", busy, ports[0])
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Errorf("port %d picked twice: %v", p, ports)
		}
		seen[p] = true
	}
	if lo := ephemeralLow(); lo > minPort+1000 {
		for _, p := range ports[1:] {
			if p < minPort || p >= lo {
				t.Errorf("picked port %d outside [%d, %d)", p, minPort, lo)
			}
		}
	}
}
