#!/usr/bin/env bats
# Images written by qemu-io, in every qcow2 variant, read back byte-exact:
# `blockctl compare IMG REF.raw` where REF.raw is `qemu-img convert -O raw`,
# and a reference with one byte changed is reported as a mismatch at the
# offset qemu-img reports.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

# The generic write pattern: aligned, unaligned, cross-cluster, overwrites,
# zeroes and discards, for an image of at least 4 MiB.
pattern() {
    qio "$1" \
        'write -P 0xa1 0 64k' \
        'write -P 0xa2 100k 5000' \
        'write -P 0xa3 1M 300k' \
        'write -P 0xa4 2047k 2k' \
        'write -P 0xa5 3157345 777' \
        'write -P 0xa6 1028k 8k' \
        'write -z 1088k 64k' \
        'discard 1224k 64k' \
        'write -P 0xa7 4095k 1k'
}

# mkvariant NAME SIZE OPTS: a qcow2 with the generic pattern and its reference
mkvariant() {
    mkq "$1.qcow2" "$2" "$3"
    pattern "$1.qcow2"
}

setup_file() {
    requires_qemu
    cd "$BATS_FILE_TMPDIR" || return 1

    mkvariant cs512 4M cluster_size=512
    mkvariant cs4k 4M cluster_size=4k
    mkvariant cs64k 4M cluster_size=64k
    mkvariant cs2m 8M cluster_size=2M
    mkvariant v2 4M compat=0.10
    mkvariant rc1 4M refcount_bits=1
    mkvariant rc64 4M refcount_bits=64
    mkvariant lazy 4M lazy_refcounts=on

    # extended L2: subcluster-sized writes, zeroes and discards
    mkq el2.qcow2 4M extended_l2=on
    qio el2.qcow2 'write -P 1 0 4k' 'write -P 2 10k 2k' 'write -P 3 64k 64k' \
        'write -z 70k 4k' 'write -P 4 130k 1k' 'discard 64k 2k' \
        'write -z -u 200k 6k' 'write -P 5 1M 300k' 'write -z 1100k 2k' \
        'discard 1200k 64k' 'write -P 6 4095k 1k'
    mkq el2-16k.qcow2 4M extended_l2=on,cluster_size=16k
    pattern el2-16k.qcow2
    qio el2-16k.qcow2 'write -P 8 17k 1k' 'write -z 33k 1k'
    mkq el2-2m.qcow2 8M extended_l2=on,cluster_size=2M
    pattern el2-2m.qcow2
    qio el2-2m.qcow2 'write -P 8 2M 64k' 'write -z 2293760 64k'

    # compressed clusters, zlib and zstd; partial overwrite of one of them
    local t
    for t in zlib zstd; do
        mkq "$t.qcow2" 4M "compression_type=$t"
        qio "$t.qcow2" 'write -c -P 0xc1 0 128k' 'write -P 0xc2 128k 64k' \
            'write -c -P 0xc3 256k 64k' 'write -c -P 0xc4 1M 512k' \
            'write -P 0xc5 1118576 100' 'write -z 1179648 64k' \
            'write -c -P 0xc6 4128768 64k'
    done
    # compressed with small and big clusters
    mkq zlib-4k.qcow2 4M cluster_size=4k
    qio zlib-4k.qcow2 'write -c -P 0xd1 0 64k' 'write -c -P 0xd2 1M 4k' 'write -P 3 1052672 4k'
    mkq zstd-2m.qcow2 8M cluster_size=2M,compression_type=zstd
    qio zstd-2m.qcow2 'write -c -P 0xd3 0 2M' 'write -c -P 0xd4 4M 2M' 'write -P 5 4204544 1k'
    # compressed data that is hard to compress (random), written with -c
    head -c 262144 /dev/urandom >rnd.bin
    QIO_FMT=raw qio rnd.bin 'write -P 0x20 0 128k'
    qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd rnd.bin rnd.qcow2

    # zero writes and discards on a v3 image, and on a v2 image
    mkq zero.qcow2 4M
    qio zero.qcow2 'write -P 1 0 1M' 'write -z 64k 64k' 'write -z -u 192k 64k' \
        'write -z 300k 4k' 'discard 512k 128k' 'write -z 2M 64k' \
        'write -z -u 3M 64k' 'write -P 2 3211264 64k'
    mkq zero-v2.qcow2 4M compat=0.10
    qio zero-v2.qcow2 'write -P 1 0 1M' 'write -z 64k 64k' 'write -z 300k 4k' \
        'discard 512k 128k' 'write -z 2M 64k'

    # refcount table growth: more clusters than one refcount table cluster
    # covers (512-byte clusters, 16-bit refcounts: 64 blocks of 256)
    mkq grow.qcow2 9M cluster_size=512
    qio grow.qcow2 'write -P 0x31 0 4M' 'write -P 0x32 4M 5M'

    # lazy refcounts left dirty by an aborted writer
    mkq dirty.qcow2 4M lazy_refcounts=on
    qio dirty.qcow2 'write -P 0x41 0 64k' 'write -P 0x42 1M 100k' 'abort' 2>/dev/null || true

    # internal snapshots: shared clusters (refcount 2), then overwritten
    mkq snap.qcow2 4M
    qio snap.qcow2 'write -P 0x51 0 1M'
    qemu-img snapshot -c s1 snap.qcow2
    qio snap.qcow2 'write -P 0x52 64k 64k' 'write -z 256k 64k' 'discard 512k 64k'
    qemu-img snapshot -c s2 snap.qcow2
    qio snap.qcow2 'write -P 0x53 100k 4k'

    # persistent bitmaps, updated by qemu-io while writing
    mkq bm.qcow2 4M
    qemu-img bitmap --add bm.qcow2 b0
    qemu-img bitmap --add -g 512k bm.qcow2 b1
    qio bm.qcow2 'write -P 0x61 0 1M' 'write -P 0x62 2M 4k'

    # a three-deep chain with overwrites at every level
    mkq base.qcow2 4M
    qio base.qcow2 'write -P 0x01 0 1M' 'write -P 0x02 2M 1M' 'write -z 3M 64k'
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
    qio mid.qcow2 'write -P 0x03 512k 1M' 'write -z 2162688 64k' 'write -P 0x0a 3178496 4k' \
        'discard 2621440 64k'
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
    qio top.qcow2 'write -P 0x04 768k 64k' 'write -P 0x05 2129920 64k' \
        'write -z 0 64k' 'write -P 0x06 4190208 4k' 'write -P 0x07 1000 1000' \
        'write -z -u 2359296 64k'

    # the same over a raw base
    qemu-img create -q -f raw rbase.raw 4M
    QIO_FMT=raw qio rbase.raw 'write -P 0x11 0 1M' 'write -P 0x12 2M 1M'
    qemu-img create -q -f qcow2 -b rbase.raw -F raw rmid.qcow2
    qio rmid.qcow2 'write -P 0x13 512k 1M' 'write -z 2162688 64k'
    qemu-img create -q -f qcow2 -b rmid.qcow2 -F qcow2 rtop.qcow2
    qio rtop.qcow2 'write -P 0x14 768k 64k' 'write -P 0x15 2129920 64k' 'write -z 0 64k'

    # a backing file shorter than its overlay, and a v2 chain
    mkq short.qcow2 1M
    qio short.qcow2 'write -P 0x21 0 1M'
    qemu-img create -q -f qcow2 -b short.qcow2 -F qcow2 long.qcow2 4M
    qio long.qcow2 'write -P 0x22 960k 128k'
    qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 v2ov.qcow2
    qio v2ov.qcow2 'write -P 0x23 100k 1M' 'write -z 2M 64k'

    local f
    for f in *.qcow2; do
        to_raw "$f" "${f%.qcow2}.ref"
    done
}

setup() {
    requires_qemu
    cd "$BATS_FILE_TMPDIR" || return 1
}

# reads_back NAME: blockctl sees what qemu-img sees
reads_back() {
    run -0 "$PROG" compare "$1.qcow2" "$1.ref"
    [ "$output" = "Images are identical." ]
    run -0 "$PROG" compare -f qcow2 -F raw "$1.qcow2" "$1.ref"
    [ "$output" = "Images are identical." ]
}

# differs NAME OFFSET: with one byte of the reference changed, both tools
# report the same first mismatch
differs() {
    cp "$1.ref" "$BATS_TEST_TMPDIR/bad.raw"
    flip_byte "$BATS_TEST_TMPDIR/bad.raw" "$2"
    run -1 qemu-img compare "$1.qcow2" "$BATS_TEST_TMPDIR/bad.raw"
    local want=$output
    [[ $want == "Content mismatch at offset"* ]]
    run -1 "$PROG" compare "$1.qcow2" "$BATS_TEST_TMPDIR/bad.raw"
    [ "$output" = "$want" ]
    # and the other way round
    run -1 "$PROG" compare "$BATS_TEST_TMPDIR/bad.raw" "$1.qcow2"
    [ "$output" = "$want" ]
}

@test "cluster_size=512: reads back byte-exact" { reads_back cs512; }
@test "cluster_size=512: a changed byte is found" { differs cs512 $((100 * 1024 + 4000)); }
@test "cluster_size=4k: reads back byte-exact" { reads_back cs4k; }
@test "cluster_size=4k: a changed byte is found" { differs cs4k 3157345; }
@test "cluster_size=64k: reads back byte-exact" { reads_back cs64k; }
@test "cluster_size=64k: a changed byte is found" { differs cs64k $((1028 * 1024 + 5)); }
@test "cluster_size=2M: reads back byte-exact" { reads_back cs2m; }
@test "cluster_size=2M: a changed byte is found" { differs cs2m $((2047 * 1024 + 1500)); }
@test "compat=0.10: reads back byte-exact" { reads_back v2; }
@test "compat=0.10: a changed byte is found" { differs v2 $((1088 * 1024 + 12345)); }
@test "refcount_bits=1: reads back byte-exact" { reads_back rc1; }
@test "refcount_bits=1: a changed byte is found" { differs rc1 12345; }
@test "refcount_bits=64: reads back byte-exact" { reads_back rc64; }
@test "refcount_bits=64: a changed byte is found" { differs rc64 $((4095 * 1024 + 1023)); }
@test "lazy_refcounts=on: reads back byte-exact" { reads_back lazy; }
@test "lazy_refcounts=on: a changed byte is found" { differs lazy 1000; }
@test "lazy_refcounts=on, dirty after abort: reads back byte-exact" { reads_back dirty; }
@test "lazy_refcounts=on, dirty after abort: a changed byte is found" { differs dirty $((1024 * 1024 + 99999)); }

@test "extended_l2=on: reads back byte-exact" { reads_back el2; }
@test "extended_l2=on: a changed byte in a subcluster is found" { differs el2 $((10 * 1024 + 100)); }
@test "extended_l2=on: a changed byte in a zero subcluster is found" { differs el2 $((70 * 1024 + 1)); }
@test "extended_l2=on: a changed byte in an unallocated subcluster is found" { differs el2 $((5 * 1024)); }
@test "extended_l2=on, 16k clusters: reads back byte-exact" { reads_back el2-16k; }
@test "extended_l2=on, 16k clusters: a changed byte is found" { differs el2-16k $((17 * 1024 + 512)); }
@test "extended_l2=on, 2M clusters: reads back byte-exact" { reads_back el2-2m; }
@test "extended_l2=on, 2M clusters: a changed byte is found" { differs el2-2m $((2048 * 1024 + 192 * 1024 + 7)); }

@test "compression_type=zlib, write -c: reads back byte-exact" { reads_back zlib; }
@test "compression_type=zlib: a changed byte in a compressed cluster is found" { differs zlib $((1024 * 1024 + 300000)); }
@test "compression_type=zstd, write -c: reads back byte-exact" { reads_back zstd; }
@test "compression_type=zstd: a changed byte in a compressed cluster is found" { differs zstd $((256 * 1024 + 4097)); }
@test "compressed, 4k clusters: reads back byte-exact" { reads_back zlib-4k; }
@test "compressed, 4k clusters: a changed byte is found" { differs zlib-4k $((1024 * 1024 + 2000)); }
@test "compressed zstd, 2M clusters: reads back byte-exact" { reads_back zstd-2m; }
@test "compressed zstd, 2M clusters: a changed byte is found" { differs zstd-2m $((5 * 1024 * 1024)); }
@test "convert -c of random data (zstd): reads back byte-exact" { reads_back rnd; }
@test "convert -c of random data (zstd): a changed byte is found" { differs rnd 200000; }

@test "zero writes (write -z, -z -u) and discards: reads back byte-exact" { reads_back zero; }
@test "zero writes: a changed byte in a zeroed cluster is found" { differs zero $((64 * 1024 + 10)); }
@test "zero writes: a changed byte in a discarded cluster is found" { differs zero $((512 * 1024 + 65536)); }
@test "zero writes on compat=0.10: reads back byte-exact" { reads_back zero-v2; }
@test "zero writes on compat=0.10: a changed byte is found" { differs zero-v2 $((64 * 1024 + 600)); }

@test "refcount table growth (512-byte clusters, 9 MiB of data): reads back byte-exact" { reads_back grow; }
@test "refcount table growth: a changed byte is found" { differs grow $((8 * 1024 * 1024 + 3)); }
@test "internal snapshots (shared clusters): reads back byte-exact" { reads_back snap; }
@test "internal snapshots: a changed byte is found" { differs snap $((100 * 1024 + 17)); }
@test "persistent bitmaps: reads back byte-exact" { reads_back bm; }
@test "persistent bitmaps: a changed byte is found" { differs bm $((2 * 1024 * 1024 + 4095)); }

@test "three-deep chain: every level reads back byte-exact" {
    reads_back base
    reads_back mid
    reads_back top
}
@test "three-deep chain: a changed byte from the base is found" { differs top $((2 * 1024 * 1024 + 768 * 1024)); }
@test "three-deep chain: a changed byte from the middle is found" { differs top $((3 * 1024 * 1024 + 33 * 1024)); }
@test "three-deep chain: a changed byte under a top zero cluster is found" { differs top 4096; }
@test "three-deep chain: a changed byte of a partial top write is found" { differs top 1999; }
@test "three-deep chain over a raw base: reads back byte-exact" {
    reads_back rmid
    reads_back rtop
}
@test "three-deep chain over a raw base: a changed byte from the raw base is found" { differs rtop $((2 * 1024 * 1024 + 512 * 1024)); }
@test "backing file shorter than the overlay: reads back byte-exact" { reads_back long; }
@test "backing file shorter than the overlay: a changed byte past the backing end is found" { differs long $((1024 * 1024 + 200)); }
@test "compat=0.10 overlay: reads back byte-exact" { reads_back v2ov; }
@test "compat=0.10 overlay: a changed byte is found" { differs v2ov $((2 * 1024 * 1024 + 100)); }

@test "blockctl compare of a chain with its qemu-img convert copy (qcow2 both sides)" {
    qemu-img convert -O qcow2 -c top.qcow2 "$BATS_TEST_TMPDIR/flat.qcow2"
    run -0 "$PROG" compare top.qcow2 "$BATS_TEST_TMPDIR/flat.qcow2"
    [ "$output" = "Images are identical." ]
    qio "$BATS_TEST_TMPDIR/flat.qcow2" 'write -P 0x99 3M 512'
    run -1 qemu-img compare top.qcow2 "$BATS_TEST_TMPDIR/flat.qcow2"
    local want=$output
    run -1 "$PROG" compare top.qcow2 "$BATS_TEST_TMPDIR/flat.qcow2"
    [ "$output" = "$want" ]
}
