// Package pubsub reads and writes the JSON files of EVE's local pubsub, the
// channel through which zedagent, zedrouter, baseosmgr and nodeagent tell
// evelet what the device wants, and through which evelet (in zedkube's role)
// answers drain requests.
//
// EVE publishes every key of a topic as one file,
// /run/<agent>/<TypeName>/<key>.json (persistent topics under
// /persist/status/<agent>/<TypeName>/), written with write-temp-then-rename.
// The content is Go's encoding/json of pillar's structs with their Go field
// names. The structs here are evelet's own, shaped so that encoding/json
// produces and consumes exactly those files: the same field names, the same
// Go types where the type decides the encoding (net.IP is a string, net.IPNet
// and net.HardwareAddr carry base64 byte slices, time.Duration is integer
// nanoseconds, UUIDs are canonical strings). docs/eve-pubsub.md lists every
// field with where the fact came from.
//
// Decoding ignores fields evelet does not know (EVE adds fields often), but a
// file that is not JSON, a known field of the wrong type, or a type evelet
// acts on that lacks what evelet needs (see the Validate methods) yields a
// *FileError naming the file and the field or byte offset.
//
// Watcher follows a set of topics and delivers a debounced Snapshot whenever
// the content changes; a file that fails to decode keeps its last good value.
//
// Reading files is enough to follow EVE, because every EVE publisher writes
// them. Publishing to EVE is not: EVE's subscribers of a non-persistent topic
// read the publisher's unix socket, never the directory. What evelet
// publishes for EVE goes through package socketpub (files and socket).
package pubsub
