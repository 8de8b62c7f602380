#!/bin/sh
# make demo: build a backing chain with blockctl, then stream one copy of it,
# commit another, mirror a third to an NBD server, and compare them all.
# SPDX-License-Identifier: GPL-2.0-or-later
set -e
B=${1:-$(dirname "$0")/../blockctl}
B=$(cd "$(dirname "$B")" && pwd)/$(basename "$B")
dir=$(mktemp -d "${TMPDIR:-/tmp}/blockctl-demo.XXXXXX")
nbd_pid=
cleanup() {
    [ -n "$nbd_pid" ] && kill "$nbd_pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir"

run() {
    echo
    echo "\$ $*"
    "$@"
}

echo "== a three-image chain: base.qcow2 <- mid.qcow2 <- top.qcow2 (in $dir)"
run "$B" create -f qcow2 base.qcow2 64M
run "$B" create -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 mid.qcow2
run "$B" create -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2

echo
echo "== some guest data at each level (written with qemu-io, a guest stand-in)"
run qemu-io -c "write -P 0x11 0 4M" -c "write -z 8M 2M" -c "write -c -P 0x12 12M 64k" base.qcow2
run qemu-io -c "write -P 0x22 2M 1M" -c "write -z 1M 64k" mid.qcow2
run qemu-io -c "write -P 0x33 3M 64k" -c "write -c -P 0x44 16M 64k" top.qcow2

echo
echo "== the chain, as info and map see it"
run "$B" info --backing-chain top.qcow2
run "$B" map --output=json top.qcow2
run "$B" check top.qcow2

echo
echo "== the guest's view, flattened, to compare everything against"
run "$B" mirror -O raw top.qcow2 expected.raw

echo
echo "== stream: pull the whole chain into a copy of top (it then stands alone)"
for f in base mid top; do cp $f.qcow2 s-$f.qcow2; done
"$B" rebase -u -b s-base.qcow2 -F qcow2 s-mid.qcow2
"$B" rebase -u -b s-mid.qcow2 -F qcow2 s-top.qcow2
run "$B" stream -p s-top.qcow2
run "$B" info s-top.qcow2
run "$B" compare s-top.qcow2 expected.raw

echo
echo "== commit: merge mid and top of another copy into its base"
for f in base mid top; do cp $f.qcow2 c-$f.qcow2; done
"$B" rebase -u -b c-base.qcow2 -F qcow2 c-mid.qcow2
"$B" rebase -u -b c-mid.qcow2 -F qcow2 c-top.qcow2
run "$B" commit --top c-top.qcow2 --base c-base.qcow2 c-top.qcow2
run "$B" info --backing-chain c-top.qcow2
run "$B" compare c-base.qcow2 expected.raw

echo
echo "== mirror: copy the disk to an NBD server (qemu-nbd serving an empty image)"
run "$B" create -f qcow2 remote.qcow2 64M
qemu-nbd -f qcow2 -k "$dir/nbd.sock" -e 2 --persistent remote.qcow2 &
nbd_pid=$!
for i in 1 2 3 4 5 6 7 8 9 10; do [ -S "$dir/nbd.sock" ] && break; sleep 0.2; done
run "$B" mirror -p top.qcow2 "nbd+unix:///?socket=$dir/nbd.sock"
run "$B" compare "nbd+unix:///?socket=$dir/nbd.sock" expected.raw
kill "$nbd_pid"; wait "$nbd_pid" 2>/dev/null || true; nbd_pid=

echo
echo "== and the image behind the server, offline"
run "$B" check remote.qcow2
run "$B" compare remote.qcow2 top.qcow2
