#!/usr/bin/env bats
# `blockctl map` agrees with `qemu-img map`, extent for extent, in JSON and
# in human form, on chains and on every kind of cluster.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

setup_file() {
    requires_qemu
    cd "$BATS_FILE_TMPDIR" || return 1

    # the chain of the reference document (1 MiB, 64 KiB clusters)
    mkq base.qcow2 1M
    qio base.qcow2 'write -P 1 0 64k' 'write -P 2 128k 64k' 'write -z 256k 64k' 'write -P 7 448k 192k'
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
    qio mid.qcow2 'write -P 3 64k 64k' 'write -z 128k 64k' 'write -P 4 640k 64k'
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
    qio top.qcow2 'write -P 5 192k 64k' 'write -P 6 320k 64k' 'write -z 320k 64k' \
        'write -P 6 384k 64k' 'write -z -u 384k 64k' 'write -P 8 448k 64k' 'write -P 9 704k 64k'

    # the same chain in a subfolder, opened from here
    mkdir sub
    cp base.qcow2 mid.qcow2 top.qcow2 sub/

    # compressed clusters
    mkq c.qcow2 1M
    qio c.qcow2 'write -c -P 1 0 128k' 'write -P 2 128k 64k' 'write -z 192k 64k'
    mkq cz.qcow2 1M compression_type=zstd
    qio cz.qcow2 'write -P 2 0 64k' 'write -c -P 1 64k 128k' 'write -c -P 3 512k 64k'

    # v2 zero writes
    mkq v2.qcow2 1M compat=0.10
    qio v2.qcow2 'write -P 1 0 64k' 'write -P 2 64k 64k' 'write -z 0 64k'

    # raw files with holes
    truncate -s 1M r.img
    QIO_FMT=raw qio r.img 'write -P 1 128k 128k' 'write -P 2 384k 64k'
    truncate -s 100k r3.img
    QIO_FMT=raw qio r3.img 'write -P 1 80k 4k'

    # short backing files, qcow2 and raw
    mkq sb.qcow2 256k
    qio sb.qcow2 'write -P 1 0 256k'
    qemu-img create -q -f qcow2 -b sb.qcow2 -F qcow2 so.qcow2 1M
    qio so.qcow2 'write -P 2 640k 64k'
    truncate -s 100k sbr.img
    QIO_FMT=raw qio sbr.img 'write -P 1 0 100k'
    qemu-img create -q -f qcow2 -b sbr.img -F raw sor.qcow2 1M

    # extended L2: partial subclusters, and an overlay over them
    mkq e.qcow2 1M extended_l2=on
    qio e.qcow2 'write -P 1 0 4k' 'write -P 2 10k 2k' 'write -P 3 64k 64k' 'write -z 70k 4k' \
        'write -z -u 200k 6k'
    qemu-img create -q -f qcow2 -o extended_l2=on -b base.qcow2 -F qcow2 eo.qcow2
    qio eo.qcow2 'write -P 5 2k 2k'

    # other cluster sizes, with the same writes
    local cs
    for cs in 512 4k 2M; do
        mkq "cs$cs.qcow2" 8M "cluster_size=$cs"
        qio "cs$cs.qcow2" 'write -P 1 0 64k' 'write -P 2 100000 5000' 'write -z 1M 1M' \
            'write -P 3 3M 300k' 'discard 3M 64k' 'write -z -u 5M 2M'
    done

    # metadata preallocation: data clusters whose host range is a hole
    mkq pre.qcow2 8M preallocation=metadata
    qio pre.qcow2 'write -P 1 0 64k' 'write -P 2 1M 4k'

    # internal snapshot: shared clusters
    mkq snap.qcow2 1M
    qio snap.qcow2 'write -P 1 0 512k'
    qemu-img snapshot -c s1 snap.qcow2
    qio snap.qcow2 'write -P 2 64k 64k' 'write -z 128k 64k'

    # a big sparse image with a few clusters
    mkq big.qcow2 1T
    qio big.qcow2 'write -P 1 0 64k' 'write -P 2 549755813888 128k' 'write -P 3 1099511562240 64k'

    # many extents: every other cluster of 4 MiB of 4k clusters
    mkq many.qcow2 4M cluster_size=4k
    local i cmds=()
    for ((i = 0; i < 1024; i += 2)); do cmds+=("write -P $((i % 250 + 1)) $((i * 4096)) 4096"); done
    qio many.qcow2 "${cmds[@]}"

    # v2 overlay over the v3 chain
    qemu-img create -q -f qcow2 -o compat=0.10 -b top.qcow2 -F qcow2 v2top.qcow2
    qio v2top.qcow2 'write -P 0x44 0 100k' 'write -z 640k 64k'
}

setup() {
    requires_qemu
    cd "$BATS_FILE_TMPDIR" || return 1
}

@test "map --output=json: three-deep chain, top" { qemu_map_equal top.qcow2; }
@test "map --output=json: three-deep chain, middle" { qemu_map_equal mid.qcow2; }
@test "map --output=json: three-deep chain, base" { qemu_map_equal base.qcow2; }
@test "map --output=json: -f qcow2 given explicitly" { qemu_map_equal -f qcow2 top.qcow2; }
@test "map --output=json: v2 overlay on a three-deep chain" { qemu_map_equal v2top.qcow2; }
@test "map --output=json: chain in a subfolder" { qemu_map_equal sub/top.qcow2; }

@test "map --output=json: --start-offset and --max-length clip extents" {
    qemu_map_equal --start-offset 100k --max-length 200k top.qcow2
    qemu_map_equal --start-offset 65537 --max-length 1 top.qcow2
    qemu_map_equal --start-offset 720896 top.qcow2
    qemu_map_equal --max-length 300000 mid.qcow2
}

@test "map --output=json: compressed clusters (zlib) have no offset" { qemu_map_equal c.qcow2; }
@test "map --output=json: compressed clusters (zstd)" { qemu_map_equal cz.qcow2; }
@test "map --output=json: compat=0.10 zero writes" { qemu_map_equal v2.qcow2; }
@test "map --output=json: raw with holes, -f raw" {
    qemu_map_equal -f raw r.img
    qemu_map_equal -f raw r3.img
}
@test "map --output=json: raw probed without -f" { qemu_map_equal r.img; }
@test "map --output=json: qcow2 backing shorter than the overlay" { qemu_map_equal so.qcow2; }
@test "map --output=json: raw backing shorter than the overlay" { qemu_map_equal sor.qcow2; }
@test "map --output=json: extended L2, partial subclusters" { qemu_map_equal e.qcow2; }
@test "map --output=json: extended L2 overlay over a normal chain" { qemu_map_equal eo.qcow2; }
@test "map --output=json: cluster_size=512" { qemu_map_equal cs512.qcow2; }
@test "map --output=json: cluster_size=4k" { qemu_map_equal cs4k.qcow2; }
@test "map --output=json: cluster_size=2M" { qemu_map_equal cs2M.qcow2; }
@test "map --output=json: internal snapshot (shared clusters)" { qemu_map_equal snap.qcow2; }
@test "map --output=json: 1 TiB sparse image" { qemu_map_equal big.qcow2; }
@test "map --output=json: 512 separate extents" { qemu_map_equal many.qcow2; }
@test "map --output=json: preallocated data clusters over host holes are zero" {
    qemu_map_equal pre.qcow2
}

@test "map --output=json prints qemu-img's layout byte for byte" {
    local a b
    a=$("$PROG" map --output=json top.qcow2)
    b=$(qemu-img map --output=json top.qcow2)
    text_diff "$a" "$b" "map --output=json top.qcow2"
}

@test "map (human): three-deep chain" {
    qemu_map_human_equal top.qcow2
    qemu_map_human_equal mid.qcow2
    qemu_map_human_equal base.qcow2
}
@test "map (human): chain in a subfolder names the files as qemu-img does" { qemu_map_human_equal sub/top.qcow2; }
@test "map (human): --start-offset and --max-length" { qemu_map_human_equal --start-offset 100k --max-length 200k top.qcow2; }
@test "map (human): compressed clusters fail as in qemu-img" {
    qemu_map_human_equal c.qcow2
    run -1 --separate-stderr "$PROG" map c.qcow2
    [ -n "$stderr" ]
}
@test "map (human): raw with holes" { qemu_map_human_equal -f raw r.img; }
@test "map (human): short qcow2 and raw backing files" {
    qemu_map_human_equal so.qcow2
    qemu_map_human_equal sor.qcow2
}
@test "map (human): extended L2" {
    qemu_map_human_equal e.qcow2
    qemu_map_human_equal eo.qcow2
}
@test "map (human): other cluster sizes" {
    qemu_map_human_equal cs512.qcow2
    qemu_map_human_equal cs2M.qcow2
}
@test "map (human): 512 separate extents" { qemu_map_human_equal many.qcow2; }
