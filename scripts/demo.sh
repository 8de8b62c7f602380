#!/bin/sh
# make demo: build a small backing chain with blockctl and look at it.
# SPDX-License-Identifier: GPL-2.0-or-later
set -e
B=${1:-$(dirname "$0")/../blockctl}
B=$(cd "$(dirname "$B")" && pwd)/$(basename "$B")
dir=$(mktemp -d "${TMPDIR:-/tmp}/blockctl-demo.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cd "$dir"

run() {
    echo
    echo "\$ $*"
    "$@"
}

echo "== a three-image chain: base.qcow2 <- mid.qcow2 <- top.qcow2 (in $dir)"
run "$B" create -f qcow2 base.qcow2 64M
run "$B" create -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
run "$B" create -f qcow2 -o cluster_size=4k,extended_l2=off -b mid.qcow2 -F qcow2 top.qcow2
run "$B" create -f raw flat.raw 64M

if command -v qemu-io >/dev/null; then
    echo
    echo "== some guest data at each level (written with qemu-io, a guest stand-in)"
    run qemu-io -c "write -P 0x11 0 4M" -c "write -z 8M 2M" base.qcow2
    run qemu-io -c "write -P 0x22 2M 1M" mid.qcow2
    run qemu-io -c "write -P 0x33 3M 64k" -c "write -c -P 0x44 16M 64k" top.qcow2
    run qemu-io -c "write -P 0x11 0 4M" -c "write -P 0x22 2M 1M" -c "write -P 0x33 3M 64k" \
        -c "write -P 0x44 16M 64k" -f raw flat.raw
fi

echo
echo "== the chain as info sees it"
run "$B" info --backing-chain top.qcow2
run "$B" info --output=json top.qcow2

echo
echo "== where the data is: which image of the chain holds each extent"
run "$B" map --output=json top.qcow2
run "$B" map top.qcow2 || true
run "$B" check top.qcow2

echo
echo "== compare: the chain and a flat raw image with the same writes show the guest the same disk"
run "$B" compare top.qcow2 flat.raw
