#!/bin/sh
# Installs what `make test` and `make demo` need on a fresh Debian 12 machine
# (see ../shared/docs/environment.md). Idempotent: does nothing when all is there.
set -eu
need=""
command -v containerd >/dev/null 2>&1 || need="$need containerd"
command -v runc >/dev/null 2>&1 || need="$need runc"
[ -x /usr/lib/cni/bridge ] || need="$need containernetworking-plugins"
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || need="$need busybox-static"
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v iptables >/dev/null 2>&1 || need="$need iptables"
command -v nsenter >/dev/null 2>&1 || need="$need util-linux"
if [ -n "$need" ]; then
  sh "$(dirname "$0")/step.sh" "installing packages with apt-get:$need (about a minute)"
  if [ "$(id -u)" != 0 ]; then
    echo "need root to apt-get install$need" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq $need >/dev/null
fi
