#!/usr/bin/env bats
# Incremental copies: blockctl mirror --sync=bitmap copies exactly the
# clusters a persistent dirty bitmap marks (qemu-img map of the target: its
# own extents are the dirty ranges), a backup chain full <- inc1 <- inc2
# reads byte for byte as the disk did at each step (qemu-img compare with
# raw snapshots), --clear-bitmap clears only once the target is safe (with
# faults injected before that, the bitmap keeps its bits), and the same
# from an NBD source offering qemu:dirty-bitmap:NAME (qemu-nbd -B,
# qemu-storage-daemon).  The disk is written by qemu-io only.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

setup() {
    requires_qemu
    requires_cmd qemu-nbd nbdinfo
    cd "$BATS_TEST_TMPDIR" || return 1
}

teardown() {
    copy_teardown
}

M=$((1 << 20))
K=1024

JQ_MERGE='sort_by(.[0]) | reduce .[] as $r ([]; if length > 0 and .[-1][1] >= $r[0]
    then .[-1][1] = ([.[-1][1], $r[1]] | max) else . + [$r] end)'

# bc_ranges IMG NAME: blockctl's --dump --output=json as merged [start,end) ranges
bc_ranges() {
    local out rc=0
    out=$(timeout 30 "$PROG" bitmap --dump --output=json "$1" "$2") || rc=$?
    [ "$rc" -eq 0 ] || { fail "blockctl bitmap --dump $1 $2 exited $rc"; return 1; }
    jq -c "[.[] | [.start, .start + .length]] | $JQ_MERGE" <<<"$out"
}

# nbd_ranges IMG NAME: the ranges qemu-nbd -r -B NAME exports as dirty
nbd_ranges() {
    local map
    # nbdinfo runs qemu-nbd itself (socket activation) and waits for it
    map=$(nbdinfo --map="qemu:dirty-bitmap:$2" --json -- [ qemu-nbd -r -f qcow2 -B "$2" "$1" ] 3>&-) ||
        { fail "qemu-nbd -B $2 + nbdinfo --map on $1 failed"; return 1; }
    jq -c "[.[] | select(.type % 2 == 1) | [.offset, .offset + .length]] | $JQ_MERGE" <<<"$map"
}

# dirty IMG NAME: the dirty ranges, as qemu-nbd reports them; blockctl's
# --dump must say the same
dirty() {
    local ours theirs
    theirs=$(nbd_ranges "$1" "$2") || return 1
    ours=$(bc_ranges "$1" "$2") || return 1
    [ "$ours" = "$theirs" ] || { fail "$1 $2: --dump $ours, qemu-nbd $theirs"; return 1; }
    echo "$theirs"
}

# own_ranges IMG: the ranges IMG holds itself (depth 0 in qemu-img map), merged
own_ranges() {
    qemu-img map -U --output=json "$1" |
        jq -c "[.[] | select(.depth == 0 and .present) | [.start, .start + .length]] | $JQ_MERGE"
}

# holds_exactly IMG RANGES: IMG's own extents are RANGES
holds_exactly() {
    local own
    own=$(own_ranges "$1")
    [ "$own" = "$2" ] || { fail "$1 holds $own itself, the dirty ranges are $2"; return 1; }
}

# ok_bc ARGS...: blockctl ARGS exits 0, silent on stderr
ok_bc() {
    run --separate-stderr timeout 60 "$PROG" "$@"
    [ "$status" -eq 0 ] || { fail "blockctl $* exited $status: $stderr"; return 1; }
    [ -z "$stderr" ] || { fail "blockctl $* printed on stderr: $stderr"; return 1; }
}

# snap DISK N: the disk as it is now, raw, in sN.raw
snap() {
    to_raw "$1" "s$2.raw"
}

# mkdisk SIZE: disk.qcow2 with data everywhere it matters, bitmap 'b' (64k)
# added once the initial contents are written
mkdisk() {
    mkq disk.qcow2 "$1"
    qio disk.qcow2 'write -P 0x10 0 4M' 'write -P 0x11 6M 2M' 'write -c -P 0x12 9M 1M' \
        'write -P 0x13 12M 4M'
    ok_bc bitmap --add disk.qcow2 b
}

# not_cleared DISK NAME WANT: the bitmap still has its bits, and is consistent
not_cleared() {
    local now
    now=$(dirty "$1" "$2") || return 1
    [ "$now" = "$3" ] || { fail "bitmap $2 lost bits: $now, had $3"; return 1; }
    [ "$(qemu-img info --output=json "$1" | jq '[."format-specific".data.bitmaps[] | select(.flags | index("in-use"))] | length')" = 0 ] ||
        { fail "$1: a bitmap left in use"; return 1; }
}

@test "--sync=bitmap -B: the new overlay holds exactly the dirty clusters, and reads as the disk" {
    local size=$(((20 << 20) + 7680))
    mkdisk "$size"
    snap disk.qcow2 0
    ok_bc mirror -O qcow2 disk.qcow2 full.qcow2
    reads_as full.qcow2 s0.raw
    # data, zeroes over data, a discard of data, unaligned writes, the
    # disk's partial last cluster
    qio disk.qcow2 'write -P 0x21 100k 4k' 'write -P 0x22 1M 200k' 'write -z 2M 128k' \
        'discard 6M 64k' 'write -P 0x23 9500k 1k' 'write -c -P 0x24 4M 64k' \
        "write -P 0x25 $((size - 512)) 512" 'write -P 0x26 17M 3M'
    snap disk.qcow2 1
    local d
    d=$(dirty disk.qcow2 b)
    [ "$(jq length <<<"$d")" -ge 6 ] || fail "few dirty ranges: $d"
    ok_bc mirror --sync=bitmap --bitmap b -B full.qcow2 -F qcow2 -O qcow2 disk.qcow2 inc1.qcow2
    reads_as inc1.qcow2 s1.raw
    holds_exactly inc1.qcow2 "$d"
    backing_is inc1.qcow2 full.qcow2 qcow2
    check_ok inc1.qcow2 full.qcow2 disk.qcow2
    # no --clear-bitmap: the bitmap is unchanged
    [ "$(dirty disk.qcow2 b)" = "$d" ] || fail "the bitmap changed without --clear-bitmap"
    # the source is not written
    snap disk.qcow2 1b
    qemu_same s1.raw s1b.raw
}

@test "--sync=bitmap at other granularities: 4k bitmap into a 4k-cluster overlay, 1M bitmap copies whole 1M chunks" {
    mkdisk 16M
    ok_bc bitmap --add -g 4k disk.qcow2 f
    ok_bc bitmap --add -g 1M disk.qcow2 c
    snap disk.qcow2 0
    ok_bc mirror -O qcow2 disk.qcow2 full.qcow2
    qio disk.qcow2 'write -P 0x31 100k 4k' 'write -P 0x32 3M 10k' 'write -z 13M 4k' 'write -P 0x33 15M 1k'
    snap disk.qcow2 1
    local df dc
    df=$(dirty disk.qcow2 f)
    dc=$(dirty disk.qcow2 c)
    [ "$df" = "[[102400,106496],[3145728,3158016],[13631488,13635584],[15728640,15732736]]" ] || fail "f: $df"
    ok_bc mirror --sync=bitmap --bitmap f -B full.qcow2 -F qcow2 -O qcow2 -o cluster_size=4096 disk.qcow2 incf.qcow2
    reads_as incf.qcow2 s1.raw
    holds_exactly incf.qcow2 "$df"
    ok_bc mirror --sync=bitmap --bitmap c -B full.qcow2 -F qcow2 -O qcow2 disk.qcow2 incc.qcow2
    reads_as incc.qcow2 s1.raw
    holds_exactly incc.qcow2 "$dc"
    check_ok incf.qcow2 incc.qcow2
}

@test "--sync=bitmap from a disk with a backing file: the ranges are read through the chain" {
    qemu-img create -q -f raw base.raw 16M
    QIO_FMT=raw qio base.raw 'write -P 0x40 0 16M'
    mkq disk.qcow2 16M "backing_file=base.raw,backing_fmt=raw"
    ok_bc bitmap --add disk.qcow2 b
    ok_bc mirror -O qcow2 disk.qcow2 full.qcow2
    # writes to the disk, one of which partially covers a cluster still in
    # the backing file
    qio disk.qcow2 'write -P 0x41 70k 1k' 'write -z 5M 64k' 'write -P 0x42 8M 128k'
    snap disk.qcow2 1
    local d
    d=$(dirty disk.qcow2 b)
    ok_bc mirror --sync=bitmap --bitmap b -B full.qcow2 -F qcow2 -O qcow2 disk.qcow2 inc1.qcow2
    reads_as inc1.qcow2 s1.raw
    holds_exactly inc1.qcow2 "$d"
    check_ok inc1.qcow2
}

@test "three-step backup chain full <- inc1 <- inc2 (--clear-bitmap) restores byte-exact at each step" {
    mkdisk 24M
    mkdir bk
    snap disk.qcow2 0
    ok_bc mirror -O qcow2 disk.qcow2 bk/full.qcow2
    qio disk.qcow2 'write -P 0x51 0 64k' 'write -z 1M 512k' 'write -P 0x52 20M 1M' 'discard 12M 1M'
    snap disk.qcow2 1
    local d1 d2
    d1=$(dirty disk.qcow2 b)
    ok_bc mirror --sync=bitmap --bitmap b --clear-bitmap -B full.qcow2 -F qcow2 -O qcow2 disk.qcow2 bk/inc1.qcow2
    holds_exactly bk/inc1.qcow2 "$d1"
    [ "$(dirty disk.qcow2 b)" = "[]" ] || fail "--clear-bitmap did not clear b"
    qio disk.qcow2 'write -P 0x53 64k 64k' 'write -P 0x54 1M 4k' 'write -z 20M 64k' 'write -c -P 0x55 23M 1M' \
        'write -P 0x56 12M 4k'
    snap disk.qcow2 2
    d2=$(dirty disk.qcow2 b)
    [ "$d2" = "[[65536,131072],[$M,$((M + 65536))],[$((12 * M)),$((12 * M + 65536))],[$((20 * M)),$((20 * M + 65536))],[$((23 * M)),$((24 * M))]]" ] ||
        fail "b after the clear records $d2"
    ok_bc mirror --sync=bitmap --bitmap b --clear-bitmap -B inc1.qcow2 -F qcow2 -O qcow2 disk.qcow2 bk/inc2.qcow2
    holds_exactly bk/inc2.qcow2 "$d2"
    [ "$(dirty disk.qcow2 b)" = "[]" ] || fail "--clear-bitmap did not clear b"
    # each step reads as the disk did then
    reads_as bk/full.qcow2 s0.raw
    reads_as bk/inc1.qcow2 s1.raw
    reads_as bk/inc2.qcow2 s2.raw
    backing_is bk/inc1.qcow2 full.qcow2 qcow2
    backing_is bk/inc2.qcow2 inc1.qcow2 qcow2
    check_ok bk/full.qcow2 bk/inc1.qcow2 bk/inc2.qcow2 disk.qcow2
    # restored, flat, by blockctl and by qemu-img: the same bytes
    ok_bc mirror -O raw bk/inc1.qcow2 r1.raw
    cmp r1.raw s1.raw
    qemu-img convert -O raw bk/inc2.qcow2 r2.raw
    cmp r2.raw s2.raw
    # the bitmap survived all this consistent, recording
    [ "$(qemu-img info --output=json disk.qcow2 | jq -c '."format-specific".data.bitmaps')" = \
        '[{"flags":["auto"],"name":"b","granularity":65536}]' ] || fail "$(qemu-img info --output=json disk.qcow2)"
}

@test "the bitmap follows the disk across an offline snapshot (the old top untouched): --dump and --sync=bitmap read the union, --clear-bitmap clears it down the chain" {
    mkdisk 16M
    mkdir bk
    ok_bc bitmap --add -g 256k --disabled disk.qcow2 off
    ok_bc mirror -O qcow2 disk.qcow2 bk/full.qcow2
    qio disk.qcow2 'write -P 0x71 0 64k' 'write -P 0x72 5M 128k'
    local before after union
    before=$(nbd_ranges disk.qcow2 b) || return 1
    ok_bc snapshot disk.qcow2 top.qcow2
    # the enabled bitmap has an enabled namesake in the overlay (same
    # granularity); the old top is only read: its bitmaps stay as they were
    [ "$(qemu-img info --output=json top.qcow2 | jq -c '."format-specific".data.bitmaps')" = \
        '[{"flags":["auto"],"name":"b","granularity":65536}]' ] || fail "top: $(qemu-img info top.qcow2)"
    [ "$(qemu-img info --output=json disk.qcow2 | jq -c '[."format-specific".data.bitmaps[] | [.name, .flags, .granularity]]')" = \
        '[["b",["auto"],65536],["off",[],262144]]' ] || fail "old top: $(qemu-img info disk.qcow2)"
    check_ok disk.qcow2 top.qcow2
    qio top.qcow2 'write -P 0x73 8M 64k' 'write -P 0x74 5M 4k'
    after=$(nbd_ranges top.qcow2 b) || return 1
    [ "$(nbd_ranges disk.qcow2 b)" = "$before" ] || fail "the old top's bitmap changed"
    union=$(jq -c -n --argjson a "$before" --argjson b "$after" "\$a + \$b | $JQ_MERGE")
    [ "$(bc_ranges top.qcow2 b)" = "$union" ] || fail "--dump top b: $(bc_ranges top.qcow2 b), union $union"
    snap top.qcow2 1
    ok_bc mirror --sync=bitmap --bitmap b --clear-bitmap -B full.qcow2 -F qcow2 -O qcow2 top.qcow2 bk/inc1.qcow2
    holds_exactly bk/inc1.qcow2 "$union"
    reads_as bk/inc1.qcow2 s1.raw
    [ "$(nbd_ranges top.qcow2 b)" = "[]" ] || fail "--clear-bitmap left b set in top.qcow2"
    [ "$(nbd_ranges disk.qcow2 b)" = "[]" ] || fail "--clear-bitmap left b set in disk.qcow2"
    [ "$(bc_ranges top.qcow2 b)" = "[]" ] || fail "the union is not empty after --clear-bitmap"
    check_ok disk.qcow2 top.qcow2 bk/inc1.qcow2
}

@test "--sync=bitmap -n into the previous copy brings it up to date" {
    mkdisk 16M
    ok_bc mirror -O raw disk.qcow2 copy.raw
    qio disk.qcow2 'write -P 0x61 5M 64k' 'write -z 0 64k' 'write -P 0x62 15M 1M'
    snap disk.qcow2 1
    ok_bc mirror --sync=bitmap --bitmap b --clear-bitmap -n -O raw disk.qcow2 copy.raw
    cmp copy.raw s1.raw
    [ "$(dirty disk.qcow2 b)" = "[]" ] || fail "not cleared"
}

@test "--clear-bitmap: a failed target flush, rename or directory sync leaves the bitmap's bits; the clearing failing is reported" {
    mkdisk 16M
    ok_bc mirror -O qcow2 disk.qcow2 full.qcow2
    qio disk.qcow2 'write -P 0x71 1M 64k' 'write -P 0x72 7M 300k'
    snap disk.qcow2 1
    local d rule
    d=$(dirty disk.qcow2 b)
    for rule in 'sync:*:eio:inc1.qcow2.part' 'rename:1:eio:inc1.qcow2' 'dirsync:*:eio:inc1.qcow2' \
        'pwrite:5:eio:inc1.qcow2.part'; do
        run --separate-stderr env BLOCKCTL_FAULT="$rule" timeout 60 "$PROG" mirror --sync=bitmap --bitmap b \
            --clear-bitmap -B full.qcow2 -F qcow2 -O qcow2 disk.qcow2 inc1.qcow2
        failed_cleanly || fail "with $rule"
        not_cleared disk.qcow2 b "$d" || fail "with $rule"
        if [ -e inc1.qcow2 ]; then
            # only acceptable if the target is complete
            reads_as inc1.qcow2 s1.raw || fail "with $rule: an incomplete inc1.qcow2 was left"
            rm -f inc1.qcow2
        fi
        [ ! -e inc1.qcow2.part ] || fail "with $rule: inc1.qcow2.part left"
    done
    # the clearing itself fails (a write to the disk): mirror says the
    # target is complete, the bitmap keeps its bits
    run --separate-stderr env BLOCKCTL_FAULT='pwrite:*:eio:disk.qcow2' timeout 60 "$PROG" mirror --sync=bitmap \
        --bitmap b --clear-bitmap -B full.qcow2 -F qcow2 -O qcow2 disk.qcow2 inc1.qcow2
    [ "$status" -eq 1 ] || fail "a failed clear exited $status"
    [[ $stderr == *complete* ]] || fail "the message does not say the target is complete: $stderr"
    reads_as inc1.qcow2 s1.raw
    holds_exactly inc1.qcow2 "$d"
    not_cleared disk.qcow2 b "$d"
    qemu_clean disk.qcow2
    rm inc1.qcow2
    # and without faults it works, once
    ok_bc mirror --sync=bitmap --bitmap b --clear-bitmap -B full.qcow2 -F qcow2 -O qcow2 disk.qcow2 inc1.qcow2
    reads_as inc1.qcow2 s1.raw
    holds_exactly inc1.qcow2 "$d"
    [ "$(dirty disk.qcow2 b)" = "[]" ] || fail "not cleared"
}

@test "--sync=bitmap errors: a missing bitmap, a raw source, a disabled-but-consistent bitmap works" {
    mkdisk 16M
    ok_bc mirror -O qcow2 disk.qcow2 full.qcow2
    run --separate-stderr "$PROG" mirror --sync=bitmap --bitmap nosuch -B full.qcow2 -F qcow2 -O qcow2 disk.qcow2 inc.qcow2
    failed_cleanly
    [[ $stderr == *nosuch* ]] || fail "$stderr"
    [ ! -e inc.qcow2 ] && [ ! -e inc.qcow2.part ] || fail "a target was left"
    to_raw disk.qcow2 disk.raw
    run --separate-stderr "$PROG" mirror --sync=bitmap --bitmap b -O qcow2 disk.raw inc.qcow2
    failed_cleanly
    [ ! -e inc.qcow2 ] && [ ! -e inc.qcow2.part ] || fail "a target was left"
    run --separate-stderr "$PROG" mirror --bitmap b -O qcow2 disk.qcow2 inc.qcow2
    [ "$status" -eq 64 ] || fail "--bitmap without --sync=bitmap exited $status"
    run --separate-stderr "$PROG" mirror --sync=bitmap -O qcow2 disk.qcow2 inc.qcow2
    [ "$status" -eq 64 ] || fail "--sync=bitmap without --bitmap exited $status"
    # a disabled bitmap is still usable
    qio disk.qcow2 'write -P 0x81 2M 64k'
    ok_bc bitmap --disable disk.qcow2 b
    snap disk.qcow2 1
    ok_bc mirror --sync=bitmap --bitmap b -B full.qcow2 -F qcow2 -O qcow2 disk.qcow2 inc.qcow2
    reads_as inc.qcow2 s1.raw
    holds_exactly inc.qcow2 "[[$((2 * M)),$((2 * M + 65536))]]"
}

@test "from an NBD source: qemu-nbd -r -B NAME, mirror --sync=bitmap nbd+unix:// copies the dirty ranges" {
    mkdisk 16M
    ok_bc bitmap --add -g 4k disk.qcow2 f
    ok_bc mirror -O qcow2 disk.qcow2 full.qcow2
    qio disk.qcow2 'write -P 0x91 100k 4k' 'write -z 2M 64k' 'write -P 0x92 5M 1M' 'discard 13M 64k' 'write -P 0x93 15M 8k'
    snap disk.qcow2 1
    local d df
    d=$(dirty disk.qcow2 b)
    df=$(dirty disk.qcow2 f)
    nbd_serve src -r -t -f qcow2 -B b -B f disk.qcow2 2>/dev/null || nbd_serve src -r -t -f qcow2 -B b disk.qcow2
    local uri=$NBD_URI pidf=$NBD_PIDFILE
    ok_bc mirror --sync=bitmap --bitmap b -B full.qcow2 -F qcow2 -O qcow2 "$uri" inc1.qcow2
    reads_as inc1.qcow2 s1.raw
    holds_exactly inc1.qcow2 "$d"
    backing_is inc1.qcow2 full.qcow2 qcow2
    check_ok inc1.qcow2
    # a bitmap the server does not offer
    run --separate-stderr "$PROG" mirror --sync=bitmap --bitmap nosuch -B full.qcow2 -F qcow2 -O qcow2 "$uri" incx.qcow2
    failed_cleanly
    [[ $stderr == *nosuch* ]] || fail "$stderr"
    [ ! -e incx.qcow2 ] && [ ! -e incx.qcow2.part ] || fail "a target was left"
    # --clear-bitmap cannot be done over NBD: refused before copying
    run --separate-stderr "$PROG" mirror --sync=bitmap --bitmap b --clear-bitmap -B full.qcow2 -F qcow2 -O qcow2 "$uri" incx.qcow2
    failed_cleanly
    [ ! -e incx.qcow2 ] && [ ! -e incx.qcow2.part ] || fail "a target was left"
    server_stop "$pidf" KILL
    [ "$(dirty disk.qcow2 b)" = "$d" ] || fail "the bitmap changed"
    # a finer bitmap, -n into a raw copy of the full backup, over NBD
    nbd_serve src2 -r -t -f qcow2 -B f disk.qcow2
    qemu-img convert -O raw full.qcow2 copy.raw
    ok_bc mirror --sync=bitmap --bitmap f -n -O raw "$NBD_URI" copy.raw
    cmp copy.raw s1.raw
    ok_bc mirror --sync=bitmap --bitmap f -B full.qcow2 -F qcow2 -O qcow2 -o cluster_size=4096 "$NBD_URI" incf.qcow2
    reads_as incf.qcow2 s1.raw
    holds_exactly incf.qcow2 "$df"
}

@test "from qemu-storage-daemon's NBD export of the disk with its bitmap" {
    requires_cmd qemu-storage-daemon
    mkdisk 16M
    ok_bc mirror -O qcow2 disk.qcow2 full.qcow2
    qio disk.qcow2 'write -P 0xa1 1M 64k' 'write -z 3M 64k' 'write -P 0xa2 10M 2M'
    snap disk.qcow2 1
    local d sock
    d=$(dirty disk.qcow2 b)
    sock=$(sock_path qsd)
    echo "$BATS_TEST_TMPDIR/qsd.pid" >>"$BATS_TEST_TMPDIR/.servers"
    qemu-storage-daemon --daemonize --pidfile "$BATS_TEST_TMPDIR/qsd.pid" \
        --blockdev driver=file,node-name=file0,filename=disk.qcow2,read-only=on \
        --blockdev driver=qcow2,node-name=disk0,file=file0,read-only=on \
        --nbd-server addr.type=unix,addr.path="$sock" \
        --export type=nbd,id=e0,node-name=disk0,name=vda,bitmaps.0=b 3>&- ||
        fail "qemu-storage-daemon did not start"
    ok_bc mirror --sync=bitmap --bitmap b -B full.qcow2 -F qcow2 -O qcow2 "nbd+unix:///vda?socket=$sock" inc1.qcow2
    server_stop "$BATS_TEST_TMPDIR/qsd.pid"
    reads_as inc1.qcow2 s1.raw
    holds_exactly inc1.qcow2 "$d"
    check_ok inc1.qcow2 disk.qcow2
}
