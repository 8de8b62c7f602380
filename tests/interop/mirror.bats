#!/usr/bin/env bats
# blockctl mirror to local files, from chains qemu-io wrote: the target reads
# as the source did (qemu-img compare with the view taken before), qemu-img
# check is clean, qemu-img info shows the format, options and backing file
# asked for, the source chain keeps its checksums, zeroes are stored as
# zeroes (no data cluster of the target reads all zeroes), TARGET is never
# clobbered and never left half-written.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

setup_file() {
    requires_qemu
    setup_chains raw qcow2
}

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
    mkdir -p o
}

teardown() {
    copy_teardown
}

# mirrored ARGS...: blockctl mirror ARGS..., which must succeed silently
mirrored() {
    run --separate-stderr "$PROG" mirror "$@"
    [ "$status" -eq 0 ] || fail "mirror $* exited $status: $stderr"
    [ -z "$stderr" ] || fail "mirror printed on stderr: $stderr"
}

source_unchanged() {
    unchanged c/top.qcow2 c/l2.qcow2 c/l1.qcow2 "$BASE"
}

# no_target T: neither T nor T.part exists
no_target() {
    [ ! -e "$1" ] || fail "$1 was left behind"
    [ ! -e "$1.part" ] || fail "$1.part was left behind"
}

# flat_copy_ok T FMT GRAN: T is a complete flat copy of the chain
flat_copy_ok() {
    reads_as "$1" "$V/top.raw"
    [ "$(info_field "$1" .format)" = "$2" ] || fail "$1 is not $2"
    backing_is "$1" '' ''
    check_ok "$1"
    zeroes_stored "$1" top.map "$3" "$V/top.raw"
    [ ! -e "$1.part" ] || fail "$1.part left behind"
    source_unchanged
}

@test "mirror (default --sync full): a flat qcow2 copy of the raw-based chain" {
    use_chain raw
    mirrored c/top.qcow2 o/t.qcow2
    flat_copy_ok o/t.qcow2 qcow2 65536
}

@test "mirror --sync full -O qcow2 of the qcow2-based chain (compressed clusters in the base)" {
    use_chain qcow2
    mirrored --sync full -O qcow2 c/top.qcow2 o/t.qcow2
    flat_copy_ok o/t.qcow2 qcow2 65536
}

@test "mirror -O raw: a sparse raw copy (zeroes are holes)" {
    use_chain raw
    mirrored -O raw c/top.qcow2 o/t.raw
    flat_copy_ok o/t.raw raw 4096
    [ "$(fsize o/t.raw)" -eq "$CHAIN_BYTES" ]
}

@test "mirror of a raw image to raw (default format: the source's)" {
    use_chain raw
    qemu-img map --output=json "$BASE" >base.map
    mirrored "$BASE" o/b.raw
    reads_as o/b.raw "$V/base.raw" -f raw
    [ "$(info_field o/b.raw .format)" = raw ]
    zeroes_stored o/b.raw base.map 4096 "$V/base.raw"
    source_unchanged
}

@test "mirror -o cluster_size=4k,lazy_refcounts=on,refcount_bits=64: options reach the target" {
    use_chain qcow2
    mirrored -O qcow2 -o cluster_size=4k,lazy_refcounts=on -o refcount_bits=64 c/top.qcow2 o/t.qcow2
    flat_copy_ok o/t.qcow2 qcow2 4096
    [ "$(info_field o/t.qcow2 '."cluster-size"')" -eq 4096 ]
    [ "$(info_field o/t.qcow2 '."format-specific".data."lazy-refcounts"')" = true ]
    [ "$(info_field o/t.qcow2 '."format-specific".data."refcount-bits"')" -eq 64 ]
    [ "$(info_field o/t.qcow2 '."dirty-flag"')" = false ] || fail "target left dirty"
}

@test "mirror -o cluster_size=2M,compat=0.10: options reach the target" {
    use_chain raw
    mirrored -O qcow2 -o cluster_size=2M,compat=0.10 c/top.qcow2 o/t.qcow2
    flat_copy_ok o/t.qcow2 qcow2 2097152
    [ "$(info_field o/t.qcow2 '."cluster-size"')" -eq 2097152 ]
    [ "$(info_field o/t.qcow2 '."format-specific".data.compat')" = 0.10 ]
}

@test "mirror -c: zlib-compressed clusters, zeroes still zero clusters" {
    use_chain raw
    mirrored -O qcow2 -c c/top.qcow2 o/t.qcow2
    flat_copy_ok o/t.qcow2 qcow2 65536
    [ "$(info_field o/t.qcow2 '."format-specific".data."compression-type"')" = zlib ]
    local n
    n=$(qemu-img check --output=json o/t.qcow2 | jq '."compressed-clusters" // 0')
    [ "$n" -gt 0 ] || fail "no compressed clusters in the target"
    # every data cluster is compressed (no host offset in the map)
    run -0 qemu-img map --output=json o/t.qcow2
    [ "$(jq '[.[] | select(.data and has("offset"))] | length' <<<"$output")" -eq 0 ] ||
        fail "uncompressed data clusters: $output"
}

@test "mirror -c -o compression_type=zstd: zstd-compressed clusters" {
    use_chain qcow2
    mirrored -O qcow2 -c -o compression_type=zstd c/top.qcow2 o/t.qcow2
    flat_copy_ok o/t.qcow2 qcow2 65536
    [ "$(info_field o/t.qcow2 '."format-specific".data."compression-type"')" = zstd ]
    local n
    n=$(qemu-img check --output=json o/t.qcow2 | jq '."compressed-clusters" // 0')
    [ "$n" -gt 0 ] || fail "no compressed clusters in the target"
    # qemu-io reads them back too
    run -0 qemu-io -f qcow2 -r -c 'read -P 0x42 16M 2M' o/t.qcow2
    [[ $output != *fail* ]] || fail "$output"
}

@test "mirror -c into a raw target is refused, nothing is left" {
    use_chain raw
    run --separate-stderr "$PROG" mirror -O raw -c c/top.qcow2 o/t.raw
    failed_cleanly
    no_target o/t.raw
}

@test "mirror --sync top into another folder: backing ../c/l2.qcow2 (qcow2), only the top copied" {
    use_chain raw
    mirrored --sync top c/top.qcow2 o/t.qcow2
    reads_as o/t.qcow2 "$V/top.raw"
    backing_is o/t.qcow2 ../c/l2.qcow2 qcow2
    check_ok o/t.qcow2
    depth0_within o/t.qcow2 top.map 0 65536
    zeroes_stored o/t.qcow2 top.map 65536 "$V/top.raw"
    source_unchanged
}

@test "mirror --shallow is --sync top (same backing, same allocation)" {
    use_chain qcow2
    mirrored --shallow c/top.qcow2 o/s.qcow2
    mirrored --sync=top c/top.qcow2 o/t.qcow2
    backing_is o/s.qcow2 ../c/l2.qcow2 qcow2
    reads_as o/s.qcow2 "$V/top.raw"
    check_ok o/s.qcow2
    [ "$(depth0_extents o/s.qcow2)" = "$(depth0_extents o/t.qcow2)" ] ||
        fail "--shallow and --sync=top differ"
    depth0_within o/s.qcow2 top.map 0 65536
    source_unchanged
}

@test "mirror --sync top of l2 (4k clusters) to raw-backed 2M-cluster target" {
    use_chain raw
    qemu-img map --output=json c/l2.qcow2 >l2.map
    mirrored --sync top -o cluster_size=2M c/l2.qcow2 o/t.qcow2
    reads_as o/t.qcow2 "$V/l2.raw"
    backing_is o/t.qcow2 ../c/l1.qcow2 qcow2
    check_ok o/t.qcow2
    depth0_within o/t.qcow2 l2.map 0 2097152
    zeroes_stored o/t.qcow2 l2.map 2097152
    source_unchanged
}

@test "mirror --sync none: an empty overlay backed by the source" {
    use_chain raw
    mirrored --sync none c/top.qcow2 o/t.qcow2
    backing_is o/t.qcow2 ../c/top.qcow2 qcow2
    reads_as o/t.qcow2 "$V/top.raw"
    check_ok o/t.qcow2
    [ "$(depth0_extents o/t.qcow2)" = "[]" ] || fail "the overlay holds data"
    source_unchanged
}

@test "mirror --sync none of a raw image: backing format raw; -O raw is refused" {
    use_chain raw
    mirrored --sync none -O qcow2 "$BASE" o/t.qcow2
    backing_is o/t.qcow2 ../c/b/base.raw raw
    reads_as o/t.qcow2 "$V/base.raw"
    run --separate-stderr "$PROG" mirror --sync none -O raw c/top.qcow2 o/t.raw
    failed_cleanly
    no_target o/t.raw
    source_unchanged
}

@test "mirror -B BACKING -F FMT: a target backed by the raw base, reading as the chain" {
    use_chain raw
    mirrored -O qcow2 -B ../c/b/base.raw -F raw c/top.qcow2 o/t.qcow2
    backing_is o/t.qcow2 ../c/b/base.raw raw
    reads_as o/t.qcow2 "$V/top.raw"
    check_ok o/t.qcow2
    zeroes_stored o/t.qcow2 top.map 65536 "$V/top.raw"
    source_unchanged
}

@test "mirror -B l1 -F qcow2: a qcow2 backing with a chain of its own" {
    use_chain qcow2
    mirrored -B ../c/l1.qcow2 -F qcow2 c/top.qcow2 o/t.qcow2
    backing_is o/t.qcow2 ../c/l1.qcow2 qcow2
    reads_as o/t.qcow2 "$V/top.raw"
    check_ok o/t.qcow2
    zeroes_stored o/t.qcow2 top.map 65536 "$V/top.raw"
    source_unchanged
}

@test "mirror -B without -F on a raw file records format raw" {
    use_chain raw
    mirrored -B ../c/b/base.raw c/top.qcow2 o/t.qcow2
    backing_is o/t.qcow2 ../c/b/base.raw raw
    reads_as o/t.qcow2 "$V/top.raw"
}

@test "mirror -n into an existing qcow2 of the same size full of other data" {
    use_chain raw
    mkq o/t.qcow2 $CHAIN_SIZE
    qio o/t.qcow2 'write -P 0xee 0 32M'
    mirrored -n c/top.qcow2 o/t.qcow2
    reads_as o/t.qcow2 "$V/top.raw"
    check_ok o/t.qcow2
    zeroes_stored o/t.qcow2 top.map 65536 "$V/top.raw"
    [ ! -e o/t.qcow2.part ]
    source_unchanged
}

@test "mirror --reuse-external into an existing raw file full of other data" {
    use_chain qcow2
    qemu-img create -q -f raw o/t.raw $CHAIN_SIZE
    QIO_FMT=raw qio o/t.raw 'write -P 0xee 0 32M'
    mirrored --reuse-external -O raw c/top.qcow2 o/t.raw
    reads_as o/t.raw "$V/top.raw" -f raw
    zeroes_stored o/t.raw top.map 4096 "$V/top.raw"
    source_unchanged
}

@test "mirror -n into an image of another size is refused; the image is unchanged" {
    use_chain raw
    mkq o/t.qcow2 16M
    qio o/t.qcow2 'write -P 0xee 0 1M'
    record_sums o/t.qcow2
    run --separate-stderr "$PROG" mirror -n c/top.qcow2 o/t.qcow2
    failed_cleanly
    one_line_error o/t.qcow2
    same_sums
    source_unchanged
}

@test "mirror -n into a missing TARGET fails and creates nothing" {
    use_chain raw
    run --separate-stderr "$PROG" mirror -n c/top.qcow2 o/t.qcow2
    failed_cleanly
    [[ $stderr == *o/t.qcow2* ]] || fail "error does not name o/t.qcow2: $stderr"
    no_target o/t.qcow2
}

@test "mirror never clobbers an existing TARGET without -n" {
    use_chain raw
    mkq o/t.qcow2 $CHAIN_SIZE
    qio o/t.qcow2 'write -P 0xee 0 1M'
    echo "not an image" >o/f.txt
    record_sums o/t.qcow2 o/f.txt
    run --separate-stderr "$PROG" mirror c/top.qcow2 o/t.qcow2
    failed_cleanly
    one_line_error o/t.qcow2
    run --separate-stderr "$PROG" mirror -O raw c/top.qcow2 o/f.txt
    failed_cleanly
    one_line_error o/f.txt
    same_sums
    [ ! -e o/t.qcow2.part ] && [ ! -e o/f.txt.part ]
    source_unchanged
}

@test "mirror over a stale TARGET.part from an interrupted run completes" {
    use_chain raw
    echo "left over" >o/t.qcow2.part
    mirrored c/top.qcow2 o/t.qcow2
    flat_copy_ok o/t.qcow2 qcow2 65536
}

@test "mirror -O raw with -B is refused, nothing is left" {
    use_chain raw
    run --separate-stderr "$PROG" mirror -O raw -B ../c/b/base.raw c/top.qcow2 o/t.raw
    failed_cleanly
    no_target o/t.raw
}

@test "mirror with an invalid -o option value is a usage error naming TARGET, nothing is left" {
    use_chain raw
    run -64 --separate-stderr "$PROG" mirror -O qcow2 -o cluster_size=3000 c/top.qcow2 o/t.qcow2
    one_line_error o/t.qcow2
    no_target o/t.qcow2
}

@test "mirror with a 64k buffer and a high --bandwidth still copies everything" {
    use_chain qcow2
    mirrored --buf-size 64k --bandwidth 1G c/top.qcow2 o/t.qcow2
    flat_copy_ok o/t.qcow2 qcow2 65536
}

@test "mirror --progress=json: JSON lines, the last one done == total" {
    use_chain raw
    run --separate-stderr "$PROG" mirror --progress=json c/top.qcow2 o/t.qcow2
    [ "$status" -eq 0 ] || fail "mirror exited $status: $stderr"
    [ "${#lines[@]}" -ge 1 ] || fail "no progress lines"
    jq -e '.done == .total and .total > 0' <<<"${lines[-1]}" >/dev/null ||
        fail "last progress line: ${lines[-1]}"
    reads_as o/t.qcow2 "$V/top.raw"
}

@test "mirror -n refuses a TARGET that qemu-nbd is serving; TARGET unchanged" {
    requires_cmd qemu-nbd
    use_chain raw
    mkq o/t.qcow2 $CHAIN_SIZE
    qio o/t.qcow2 'write -P 0xee 0 1M'
    nbd_serve t -f qcow2 o/t.qcow2
    record_sums o/t.qcow2
    run --separate-stderr timeout 30 "$PROG" mirror -n c/top.qcow2 o/t.qcow2
    failed_cleanly
    [[ $stderr == *o/t.qcow2* ]] || fail "error does not name o/t.qcow2: $stderr"
    same_sums
    source_unchanged
}

@test "mirror refuses a SOURCE that qemu-nbd is writing; no TARGET is made" {
    requires_cmd qemu-nbd
    use_chain raw
    nbd_serve top -f qcow2 c/top.qcow2
    run --separate-stderr timeout 30 "$PROG" mirror c/top.qcow2 o/t.qcow2
    failed_cleanly
    [[ $stderr == *top.qcow2* ]] || fail "error does not name top.qcow2: $stderr"
    no_target o/t.qcow2
}
