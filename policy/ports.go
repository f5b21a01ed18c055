package policy

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ListeningPorts reads /proc/net/{tcp,tcp6,udp,udp6} (proc_net_tcp(5)): a
// TCP socket in state LISTEN (0A), and every UDP socket (a UDP socket is
// bound as soon as it has a local port), of the shim's network namespace.
func (realFS) ListeningPorts() (map[int]bool, error) {
	out := map[int]bool{}
	for _, f := range []struct {
		name string
		tcp  bool
	}{{"tcp", true}, {"tcp6", true}, {"udp", false}, {"udp6", false}} {
		b, err := os.ReadFile("/proc/net/" + f.name)
		if os.IsNotExist(err) && strings.HasSuffix(f.name, "6") {
			continue // no IPv6 in this kernel
		}
		if err != nil {
			return nil, err
		}
		if err := parseProcNet(b, f.tcp, out); err != nil {
			return nil, fmt.Errorf("/proc/net/%s: %w", f.name, err)
		}
	}
	return out, nil
}

// parseProcNet adds the local ports of the table's listening (tcp) or bound
// (udp) sockets to ports. Lines: "sl local_address rem_address st ...",
// addresses as hex "ADDR:PORT".
func parseProcNet(b []byte, tcp bool, ports map[int]bool) error {
	sc := bufio.NewScanner(bytes.NewReader(b))
	first := true
	for sc.Scan() {
		if first { // the header
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 4 {
			continue
		}
		if tcp && f[3] != "0A" {
			continue
		}
		i := strings.LastIndexByte(f[1], ':')
		if i < 0 {
			return fmt.Errorf("bad local address %q", f[1])
		}
		port, err := strconv.ParseUint(f[1][i+1:], 16, 16)
		if err != nil {
			return fmt.Errorf("bad local address %q", f[1])
		}
		if port != 0 {
			ports[int(port)] = true
		}
	}
	return sc.Err()
}
