#!/bin/sh
# Regenerate eve/evecfg/evepb from eve/evecfg/proto/*.proto.
#
# Needs protoc (Debian: protobuf-compiler) and protoc-gen-go at the version
# go.mod pins for google.golang.org/protobuf, installed into _output/tools
# (done here if missing). The generated code is committed; run this (or
# `make proto`) after editing a .proto file.
set -eu

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TOOLS="$ROOT/_output/tools"
PROTO_DIR=eve/evecfg/proto
OUT_DIR=eve/evecfg/evepb

command -v protoc >/dev/null 2>&1 || {
	echo "proto.sh: protoc not found (apt-get install protobuf-compiler)" >&2
	exit 1
}

PB_VERSION=$(go list -m -f '{{.Version}}' google.golang.org/protobuf)
GEN="$TOOLS/protoc-gen-go"
if [ ! -x "$GEN" ] || [ "$("$GEN" --version 2>/dev/null | awk '{print $2}')" != "$PB_VERSION" ]; then
	echo "proto.sh: installing protoc-gen-go $PB_VERSION into $TOOLS" >&2
	GOBIN="$TOOLS" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PB_VERSION"
fi

rm -f "$OUT_DIR"/*.pb.go
mkdir -p "$OUT_DIR"
# Files register under their bare names (eve_common.proto, ...). Message full
# names are eve-api's (org.lfedge.eve.*) on purpose, so this package and
# eve-api's own Go code must never be linked into one binary.
protoc \
	--plugin=protoc-gen-go="$GEN" \
	--proto_path="$PROTO_DIR" \
	--go_out="$OUT_DIR" \
	--go_opt=paths=source_relative \
	"$PROTO_DIR"/*.proto
echo "proto.sh: generated $(ls "$OUT_DIR"/*.pb.go | wc -l) files in $OUT_DIR"
