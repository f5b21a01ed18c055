// Package evepb holds the Go types generated from evelet's own subset of the
// EVE API protobufs (eve/evecfg/proto). Proto package names match
// lf-edge/eve-api (org.lfedge.eve.auth, .common, .config) and every declared
// field has eve-api's number and wire type, so bytes written by an EVE
// controller parse here and vice versa. Regenerate with `sh hack/proto.sh`.
package evepb
