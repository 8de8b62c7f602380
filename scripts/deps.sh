#!/bin/sh
# Install what blockctl needs on Debian/Ubuntu, if it is missing.
#   scripts/deps.sh build   compiler and libraries
#   scripts/deps.sh test    the peers the tests run against (qemu, nbd tools, bats)
#   scripts/deps.sh guest   what tests/interop/guest.bats boots: qemu-system-x86,
#                           a Debian kernel, busybox-static, cpio, libc.a
# SPDX-License-Identifier: GPL-2.0-or-later
set -e

case "$1" in
build) pkgs="gcc make pkg-config perl zlib1g-dev libzstd-dev libnbd-dev libjson-c-dev libgnutls28-dev" ;;
test) pkgs="bats jq qemu-utils qemu-system-common libnbd-bin python3 python3-libnbd nbdkit gnutls-bin iproute2" ;;
fuzz) pkgs="clang libclang-rt-dev" ;;
# (without qemu's recommends: no GUI, no UEFI firmware)
guest) pkgs="qemu-system-x86 linux-image-amd64 busybox-static cpio libc6-dev"
    opts=--no-install-recommends ;;
*) echo "usage: $0 build|test|fuzz|guest" >&2; exit 64 ;;
esac

missing=
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "blockctl: installing:$missing" >&2
if [ "$(id -u)" -eq 0 ]; then
    sudo=
elif command -v sudo >/dev/null; then
    sudo=sudo
else
    echo "blockctl: please install:$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null || true
$sudo apt-get install -y -qq ${opts:-} $missing >/dev/null
