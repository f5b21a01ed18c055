// Package nodedns is the device's node-local cluster DNS: CoreDNS (run as
// `evelet dns`, package nodedns/server) listening on a link-local address
// on a dummy interface evelet owns. This package holds what the agent needs
// without linking CoreDNS: the Corefile, the interface and the upstream
// resolvers EVE gives the device. See docs/cluster-dns.md.
package nodedns
