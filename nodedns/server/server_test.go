package server

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/nodedns"
	"github.com/miekg/dns"
	"k8s.io/apimachinery/pkg/util/wait"
)

// freePort returns a port free for both UDP and TCP on 127.0.0.1 (a small
// race with other processes is accepted in a unit test).
func freePort(t testing.TB) int {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// upstream is a tiny resolver standing in for the ones EVE gives the device.
func upstream(t testing.TB) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if strings.HasPrefix(r.Question[0].Name, "outside") && r.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR(r.Question[0].Name + " 60 IN A 192.0.2.7")
			m.Answer = append(m.Answer, rr)
		} else {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// startServer runs a node-local DNS on 127.0.0.1 forwarding to up, with
// an apiserver nobody listens on, and returns its address.
func startServer(t testing.TB, up string) string {
	dir := t.TempDir()
	// An apiserver nobody listens on: CoreDNS starts anyway (after its
	// startup timeout) and forwards what is not the cluster's.
	kc := filepath.Join(dir, "kubeconfig")
	os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600)
	port := freePort(t)
	cfg := nodedns.Config{Address: "127.0.0.1", Port: port, Kubeconfig: kc, Upstreams: []string{up}}
	corefile, err := cfg.Corefile()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, corefile, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	q := new(dns.Msg)
	q.SetQuestion("ready.probe.", dns.TypeA)
	err = wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		select {
		case err := <-done:
			t.Fatalf("server ended: %v", err)
		default:
		}
		_, _, err := new(dns.Client).Exchange(q, addr)
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("no answer from %s: %v", addr, err)
	}
	return addr
}

func TestServesForwardedNamesOnlyOnItsAddress(t *testing.T) {
	addr := startServer(t, upstream(t))
	_, port, _ := net.SplitHostPort(addr)
	q := new(dns.Msg)
	q.SetQuestion("outside.example.", dns.TypeA)
	resp, _, err := new(dns.Client).Exchange(q, addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Answer) != 1 || resp.Answer[0].(*dns.A).A.String() != "192.0.2.7" {
		t.Fatalf("forwarded answer %v", resp)
	}
	// Bound to its address only: not on the host's other addresses.
	if ips, _ := net.InterfaceAddrs(); len(ips) > 0 {
		for _, a := range ips {
			ip := a.(*net.IPNet).IP
			if ip.IsLoopback() || ip.To4() == nil {
				continue
			}
			c := &dns.Client{Timeout: 300 * time.Millisecond}
			if _, _, err := c.Exchange(q, net.JoinHostPort(ip.String(), port)); err == nil {
				t.Errorf("answered on %s too", ip)
			}
		}
	}
}

// BenchmarkQuery: one query over UDP on loopback to the node-local DNS,
// answered from its cache (cached), forwarded to the upstream each time
// (uncached: a new name per query), and to the upstream directly, for the
// server's own cost. docs/benchmarks.md records a run.
func BenchmarkQuery(b *testing.B) {
	up := upstream(b)
	addr := startServer(b, up)
	c := new(dns.Client)
	query := func(b *testing.B, server, name string) {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		r, _, err := c.Exchange(q, server)
		if err != nil || len(r.Answer) != 1 {
			b.Fatalf("%s: %v %v", name, err, r)
		}
	}
	b.Run("cached", func(b *testing.B) {
		query(b, addr, "outside.cached.")
		for b.Loop() {
			query(b, addr, "outside.cached.")
		}
	})
	b.Run("uncached", func(b *testing.B) {
		i := 0
		for b.Loop() {
			i++
			query(b, addr, "outside"+strconv.Itoa(i)+".uncached.")
		}
	})
	b.Run("upstream-direct", func(b *testing.B) {
		for b.Loop() {
			query(b, up, "outside.direct.")
		}
	})
}
