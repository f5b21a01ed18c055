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
# qemu-ga: a real guest agent for the qga/stream tests (cri/vm)
command -v qemu-ga >/dev/null 2>&1 || need="$need qemu-guest-agent"
# VM guest image (images/vmguest) and its boot tests.
command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
command -v qemu-img >/dev/null 2>&1 || need="$need qemu-utils"
command -v syslinux >/dev/null 2>&1 || need="$need syslinux"
[ -f /usr/lib/syslinux/mbr/mbr.bin ] || need="$need syslinux-common"
command -v mcopy >/dev/null 2>&1 || need="$need mtools"
command -v mkfs.vfat >/dev/null 2>&1 || need="$need dosfstools"
command -v cpio >/dev/null 2>&1 || need="$need cpio"
command -v dnsmasq >/dev/null 2>&1 || need="$need dnsmasq-base" # tests/evesim network instances, vmguest boot tests
# images/vmguest fetches the cloud kernel with apt-get download: it needs
# the package lists, which a fresh machine may not have yet.
nolists=""
apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1 || nolists=1
if [ -n "$need$nolists" ]; then
  sh "$(dirname "$0")/step.sh" "installing packages with apt-get:${need:- (package lists only)} (about a minute)"
  if [ "$(id -u)" != 0 ]; then
    echo "need root to apt-get update/install$need" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if [ -n "$need" ]; then
    # shellcheck disable=SC2086
    apt-get install -y -qq $need >/dev/null
  fi
fi
