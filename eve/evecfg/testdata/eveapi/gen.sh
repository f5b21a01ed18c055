#!/bin/sh
# Regenerate the eve-api known-answer files in this directory from a checkout
# of github.com/lf-edge/eve-api, with protoc (Debian: protobuf-compiler):
#
#   sh gen.sh /path/to/eve-api
#
# descriptors.pb   FileDescriptorSet of eve-api's config/devconfig.proto and
#                  auth/auth.proto with all imports: what eve-api itself says
#                  every message, field and enum is. wire_test compares our
#                  subset (eve/evecfg/proto) against it.
# edgedevconfig.bin  edgedevconfig.txtpb encoded by protoc with eve-api's own
#                  .proto files (not ours): bytes an independent encoder made.
# SOURCE           the eve-api commit both came from.
set -eu
API=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$API/proto"
protoc -I . -I /usr/include --include_imports --descriptor_set_out="$HERE/descriptors.pb" \
	config/devconfig.proto auth/auth.proto
protoc -I . -I /usr/include --encode=org.lfedge.eve.config.EdgeDevConfig config/devconfig.proto \
	<"$HERE/edgedevconfig.txtpb" >"$HERE/edgedevconfig.bin"
echo "lf-edge/eve-api $(git -C "$API" rev-parse HEAD 2>/dev/null || echo "<commit>")" >"$HERE/SOURCE"
