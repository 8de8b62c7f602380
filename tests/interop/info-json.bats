#!/usr/bin/env bats
# `blockctl info` agrees with `qemu-img info`: JSON field for field, and the
# human output line for line, on every kind of image.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

setup_file() {
    requires_qemu
    cd "$BATS_FILE_TMPDIR" || return 1

    truncate -s 4M raw.img
    QIO_FMT=raw qio raw.img 'write -P 1 0 200k'
    printf 'abcdefgh' >notimg.bin
    mkq v3.qcow2 64M
    qio v3.qcow2 'write -P 1 0 128k'
    mkq v2.qcow2 64M compat=0.10
    qemu-img create -q -f qcow2 -b v3.qcow2 -F qcow2 ov.qcow2
    qemu-img create -q -f qcow2 -b ov.qcow2 -F qcow2 top.qcow2
    qio top.qcow2 'write -P 2 1M 64k'
    mkq lazy.qcow2 64M lazy_refcounts=on
    mkq el2.qcow2 64M extended_l2=on
    mkq zstd.qcow2 64M compression_type=zstd
    mkq rc1.qcow2 64M refcount_bits=1
    mkq rc64.qcow2 64M refcount_bits=64
    mkq cs512.qcow2 3M cluster_size=512
    mkq cs2m.qcow2 64M cluster_size=2M,extended_l2=on
    mkq odd.qcow2 1000
    mkq empty.qcow2 0
    mkq big.qcow2 1T
    mkq sized.qcow2 5000000

    mkq snap.qcow2 64M
    qio snap.qcow2 'write -P 1 0 128k'
    qemu-img snapshot -c snap1 snap.qcow2
    qio snap.qcow2 'write -P 2 0 64k'
    qemu-img snapshot -c 'second snapshot with long name' snap.qcow2

    mkq bm.qcow2 64M
    qemu-img bitmap --add bm.qcow2 bm0
    qemu-img bitmap --add -g 512k bm.qcow2 bm1
    qemu-img bitmap --add --disable bm.qcow2 bm2
    cp bm.qcow2 bmuse.qcow2
    qio bmuse.qcow2 'write 0 64k' 'abort' 2>/dev/null || true

    mkq dirty.qcow2 64M lazy_refcounts=on
    qio dirty.qcow2 'write -P 1 0 64k' 'abort' 2>/dev/null || true

    mkq corrupt.qcow2 64M
    qedit corrupt.qcow2 set incompatible_features 2

    mkdir sub
    mkq sub/base.qcow2 1M
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 sub/ov.qcow2
    qemu-img create -q -f qcow2 -b "$BATS_FILE_TMPDIR/v3.qcow2" -F qcow2 abs.qcow2
    qemu-img create -q -f qcow2 -u -b missing.qcow2 -F qcow2 miss.qcow2 64M

    # backing file without a recorded format: the extension's magic is
    # overwritten, as in the reference document
    qemu-img create -q -f qcow2 -b v3.qcow2 -F qcow2 nofmt.qcow2
    local off
    off=$(qedit nofmt.qcow2 ext backing_format)
    # and a header whose size field is not a multiple of 512 (qemu-img's
    # own create rounds it up; other tools may not)
    mkq size1000.qcow2 1M
    qedit nofmt.qcow2 u32 "$off" 0x12345678
    qedit size1000.qcow2 set size 1000

    # a chain over a raw base
    qemu-img create -q -f qcow2 -b raw.img -F raw rawov.qcow2
    qemu-img create -q -f qcow2 -b rawov.qcow2 -F qcow2 rawtop.qcow2
}

setup() {
    requires_qemu
    cd "$BATS_FILE_TMPDIR" || return 1
}

@test "info --output=json: raw" { qemu_info_equal raw.img; }
@test "info --output=json: raw of 8 bytes (rounded up to 512)" { qemu_info_equal notimg.bin; }
@test "info --output=json: qcow2 v3 with data" { qemu_info_equal v3.qcow2; }
@test "info --output=json: compat=0.10" { qemu_info_equal v2.qcow2; }
@test "info --output=json: overlay" { qemu_info_equal ov.qcow2; }
@test "info --output=json: lazy_refcounts=on" { qemu_info_equal lazy.qcow2; }
@test "info --output=json: extended_l2=on" { qemu_info_equal el2.qcow2; }
@test "info --output=json: compression_type=zstd" { qemu_info_equal zstd.qcow2; }
@test "info --output=json: refcount_bits=1" { qemu_info_equal rc1.qcow2; }
@test "info --output=json: refcount_bits=64" { qemu_info_equal rc64.qcow2; }
@test "info --output=json: cluster_size=512" { qemu_info_equal cs512.qcow2; }
@test "info --output=json: cluster_size=2M" { qemu_info_equal cs2m.qcow2; }
@test "info --output=json: size 1000 (not a multiple of 512)" { qemu_info_equal odd.qcow2; }
@test "info --output=json: size 5000000" { qemu_info_equal sized.qcow2; }
@test "info --output=json: header size field 1000 (crafted)" { qemu_info_equal size1000.qcow2; }
@test "info --output=json: size 0" { qemu_info_equal empty.qcow2; }
@test "info --output=json: 1 TiB" { qemu_info_equal big.qcow2; }
@test "info --output=json: internal snapshots" { qemu_info_equal snap.qcow2; }
@test "info --output=json: bitmaps (auto, granularity, disabled)" { qemu_info_equal bm.qcow2; }
@test "info --output=json: bitmaps left in use" { qemu_info_equal bmuse.qcow2; }
@test "info --output=json: dirty lazy-refcount image" { qemu_info_equal dirty.qcow2; }
@test "info --output=json: corrupt bit" { qemu_info_equal corrupt.qcow2; }
@test "info --output=json: relative backing in a subfolder" { qemu_info_equal sub/ov.qcow2; }
@test "info --output=json: absolute backing path" { qemu_info_equal abs.qcow2; }
@test "info --output=json: missing backing file" { qemu_info_equal miss.qcow2; }
@test "info --output=json: backing file without a recorded format" { qemu_info_equal nofmt.qcow2; }
@test "info --output=json: -f raw on a qcow2 file" { qemu_info_equal -f raw v3.qcow2; }
@test "info --output=json: -U" { qemu_info_equal -U top.qcow2; }

@test "info --output=json --backing-chain: three-deep chain" { qemu_info_equal --backing-chain top.qcow2; }
@test "info --output=json --backing-chain: raw" { qemu_info_equal --backing-chain raw.img; }
@test "info --output=json --backing-chain: chain over a raw base" { qemu_info_equal --backing-chain rawtop.qcow2; }
@test "info --output=json --backing-chain: subfolder" { qemu_info_equal --backing-chain sub/ov.qcow2; }
@test "info --backing-chain with a missing backing file fails as in qemu-img" {
    run -1 qemu-img info --backing-chain miss.qcow2
    run -1 --separate-stderr "$PROG" info --backing-chain miss.qcow2
    [[ $stderr == *missing.qcow2* ]]
    run -1 --separate-stderr "$PROG" info --backing-chain --output=json miss.qcow2
}

@test "info -f qcow2 on a raw file fails as in qemu-img" {
    run -1 qemu-img info -f qcow2 raw.img
    run -1 --separate-stderr "$PROG" info -f qcow2 raw.img
    [[ $stderr == *raw.img* ]]
}

@test "info --output=json prints qemu-img's layout byte for byte" {
    local f a b
    for f in v3.qcow2 top.qcow2 snap.qcow2 bm.qcow2 raw.img; do
        a=$("$PROG" info --output=json "$f")
        b=$(qemu-img info --output=json "$f")
        text_diff "$a" "$b" "info --output=json $f"
    done
    a=$("$PROG" info --output=json --backing-chain top.qcow2)
    b=$(qemu-img info --output=json --backing-chain top.qcow2)
    text_diff "$a" "$b" "info --output=json --backing-chain top.qcow2"
}

@test "info (human): raw" { qemu_info_human_equal raw.img; }
@test "info (human): raw of 8 bytes" { qemu_info_human_equal notimg.bin; }
@test "info (human): qcow2 v3" { qemu_info_human_equal v3.qcow2; }
@test "info (human): compat=0.10" { qemu_info_human_equal v2.qcow2; }
@test "info (human): overlay" { qemu_info_human_equal ov.qcow2; }
@test "info (human): lazy, extended L2, zstd, refcount widths" {
    qemu_info_human_equal lazy.qcow2
    qemu_info_human_equal el2.qcow2
    qemu_info_human_equal zstd.qcow2
    qemu_info_human_equal rc1.qcow2
    qemu_info_human_equal rc64.qcow2
}
@test "info (human): sizes (512-byte clusters, 2M clusters, 1000, 5000000, 0, 1 TiB)" {
    qemu_info_human_equal cs512.qcow2
    qemu_info_human_equal cs2m.qcow2
    qemu_info_human_equal odd.qcow2
    qemu_info_human_equal sized.qcow2
    qemu_info_human_equal empty.qcow2
    qemu_info_human_equal big.qcow2
    qemu_info_human_equal size1000.qcow2
}
@test "info (human): internal snapshots table" { qemu_info_human_equal snap.qcow2; }
@test "info (human): bitmaps" { qemu_info_human_equal bm.qcow2; }
@test "info (human): bitmaps in use" { qemu_info_human_equal bmuse.qcow2; }
@test "info (human): dirty image says 'cleanly shut down: no'" { qemu_info_human_equal dirty.qcow2; }
@test "info (human): corrupt bit" { qemu_info_human_equal corrupt.qcow2; }
@test "info (human): relative backing in a subfolder shows the actual path" { qemu_info_human_equal sub/ov.qcow2; }
@test "info (human): absolute backing, missing backing, backing without format" {
    qemu_info_human_equal abs.qcow2
    qemu_info_human_equal miss.qcow2
    qemu_info_human_equal nofmt.qcow2
}
@test "info (human) --backing-chain: three-deep chain" { qemu_info_human_equal --backing-chain top.qcow2; }
@test "info (human) --backing-chain: chain over a raw base" { qemu_info_human_equal --backing-chain rawtop.qcow2; }
