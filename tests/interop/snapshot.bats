#!/usr/bin/env bats
# blockctl snapshot: external snapshots of several disks at once, all or
# nothing.  Each overlay is a clean qcow2 that holds nothing, records its
# IMAGE (relative as given) with the format, and reads as IMAGE did; the
# IMAGEs keep their checksums.  snapshot -l lists the chain as qemu-img info
# --backing-chain sees it.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

setup_file() {
    requires_qemu
    setup_chains raw
}

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
    mkdir -p s
}

teardown() {
    copy_teardown
}

all_unchanged() {
    unchanged c/top.qcow2 c/l2.qcow2 c/l1.qcow2 "$BASE"
}

# overlay_ok OVERLAY BACKING FMT VIEW: a clean, empty qcow2 overlay
overlay_ok() {
    [ "$(info_field "$1" .format)" = qcow2 ] || fail "$1 is not qcow2"
    backing_is "$1" "$2" "$3"
    [ "$(info_field "$1" '."virtual-size"')" -eq "$CHAIN_BYTES" ] || fail "$1 has another size"
    check_ok "$1"
    reads_as "$1" "$4"
    [ "$(depth0_extents "$1")" = "[]" ] || fail "$1 holds data"
}

@test "snapshot of three images at once: overlays in other folders, raw and qcow2 IMAGEs" {
    use_chain raw
    run --separate-stderr "$PROG" snapshot c/top.qcow2 s/top-snap.qcow2 \
        "$BASE" s/base-snap.qcow2 c/l1.qcow2 c/l1-snap.qcow2
    [ "$status" -eq 0 ] || fail "snapshot exited $status: $stderr"
    [ -z "$stderr" ] || fail "snapshot printed on stderr: $stderr"
    overlay_ok s/top-snap.qcow2 ../c/top.qcow2 qcow2 "$V/top.raw"
    overlay_ok s/base-snap.qcow2 ../c/b/base.raw raw "$V/base.raw"
    overlay_ok c/l1-snap.qcow2 l1.qcow2 qcow2 "$V/l1.raw"
    all_unchanged
}

@test "snapshot -q prints nothing; the overlay takes writes and the IMAGE stays as it was" {
    use_chain raw
    run --separate-stderr "$PROG" snapshot -q c/top.qcow2 s/a.qcow2 c/l2.qcow2 s/b.qcow2
    [ "$status" -eq 0 ] || fail "snapshot exited $status: $stderr"
    [ -z "$output" ] && [ -z "$stderr" ] || fail "output with -q: $output $stderr"
    qio s/a.qcow2 'write -P 0x99 0 4M' 'write -z 16M 2M'
    qio s/b.qcow2 'write -c -P 0x98 24M 64k'
    check_ok s/a.qcow2 s/b.qcow2
    all_unchanged
    reads_as c/top.qcow2 "$V/top.raw"
}

@test "snapshot -F qcow2 -o cluster_size=4k,lazy_refcounts=on: options reach the overlays" {
    use_chain raw
    run --separate-stderr "$PROG" snapshot -F qcow2 -o cluster_size=4k,lazy_refcounts=on \
        c/top.qcow2 s/a.qcow2 c/l2.qcow2 s/b.qcow2
    [ "$status" -eq 0 ] || fail "snapshot exited $status: $stderr"
    overlay_ok s/a.qcow2 ../c/top.qcow2 qcow2 "$V/top.raw"
    overlay_ok s/b.qcow2 ../c/l2.qcow2 qcow2 "$V/l2.raw"
    [ "$(info_field s/a.qcow2 '."cluster-size"')" -eq 4096 ]
    [ "$(info_field s/b.qcow2 '."format-specific".data."lazy-refcounts"')" = true ]
    all_unchanged
}

@test "snapshot of an IMAGE given by an absolute path records the absolute path" {
    use_chain raw
    run --separate-stderr "$PROG" snapshot "$PWD/c/top.qcow2" s/a.qcow2
    [ "$status" -eq 0 ] || fail "snapshot exited $status: $stderr"
    overlay_ok s/a.qcow2 "$PWD/c/top.qcow2" qcow2 "$V/top.raw"
}

@test "snapshot is all or nothing: an existing OVERLAY among the pairs" {
    use_chain raw
    echo keep >s/b.qcow2
    record_sums s/b.qcow2
    run --separate-stderr "$PROG" snapshot c/top.qcow2 s/a.qcow2 c/l2.qcow2 s/b.qcow2 \
        c/l1.qcow2 s/c.qcow2
    failed_cleanly
    [[ $stderr == *s/b.qcow2* ]] || fail "error does not name s/b.qcow2: $stderr"
    [ ! -e s/a.qcow2 ] && [ ! -e s/c.qcow2 ] || fail "an overlay was left: $(ls s)"
    same_sums
    all_unchanged
}

@test "snapshot is all or nothing: a missing IMAGE among the pairs" {
    use_chain raw
    run --separate-stderr "$PROG" snapshot c/top.qcow2 s/a.qcow2 c/nothere.qcow2 s/b.qcow2
    failed_cleanly
    [[ $stderr == *nothere.qcow2* ]] || fail "error does not name nothere.qcow2: $stderr"
    [ -z "$(ls s)" ] || fail "overlays left: $(ls s)"
    all_unchanged
}

@test "snapshot is all or nothing: the last overlay cannot be created" {
    use_chain raw
    run --separate-stderr "$PROG" snapshot c/top.qcow2 s/a.qcow2 c/l2.qcow2 s/b.qcow2 \
        c/l1.qcow2 s/missing-dir/c.qcow2
    failed_cleanly
    [[ $stderr == *missing-dir/c.qcow2* ]] || fail "error does not name the overlay: $stderr"
    [ -z "$(ls s)" ] || fail "overlays left: $(ls s)"
    all_unchanged
}

@test "snapshot is all or nothing: the same OVERLAY named twice" {
    use_chain raw
    run --separate-stderr "$PROG" snapshot c/top.qcow2 s/a.qcow2 c/l2.qcow2 s/a.qcow2
    failed_cleanly
    [ ! -e s/a.qcow2 ] || fail "s/a.qcow2 was left"
    all_unchanged
}

@test "snapshot refuses an IMAGE that qemu-nbd is writing; no overlay is made" {
    requires_cmd qemu-nbd
    use_chain raw
    nbd_serve top -f qcow2 c/top.qcow2
    run --separate-stderr timeout 30 "$PROG" snapshot c/l1.qcow2 s/a.qcow2 c/top.qcow2 s/b.qcow2
    failed_cleanly
    [[ $stderr == *top.qcow2* ]] || fail "error does not name top.qcow2: $stderr"
    [ -z "$(ls s)" ] || fail "overlays left: $(ls s)"
}

@test "snapshot -l --output=json lists the chain as qemu-img info --backing-chain" {
    use_chain raw
    qemu-img snapshot -c first c/l2.qcow2
    qemu-img snapshot -c second c/l2.qcow2
    "$PROG" snapshot -q c/top.qcow2 s/a.qcow2
    run --separate-stderr "$PROG" snapshot -l --output=json s/a.qcow2
    [ "$status" -eq 0 ] || fail "snapshot -l exited $status: $stderr"
    local ours theirs
    ours=$(jq -c '[.[] | {filename, format, "virtual-size": ."virtual-size",
        "backing-filename": (."backing-filename" // null)}]' <<<"$output")
    theirs=$(qemu-img info --backing-chain --output=json s/a.qcow2 |
        jq -c '[.[] | {filename, format, "virtual-size": ."virtual-size",
        "backing-filename": (."backing-filename" // null)}]')
    [ "$ours" = "$theirs" ] || fail "chain differs: ours $ours, qemu-img $theirs"
    [ "$(jq -c '[.[2].snapshots[].name]' <<<"$output")" = '["first","second"]' ] ||
        fail "internal snapshots of l2: $output"
    [ "$(jq -c '[.[0,1,3,4].snapshots | length]' <<<"$output")" = '[0,0,0,0]' ]
}

@test "snapshot -l (human) names every image of the chain, top first, and the internal snapshots" {
    use_chain raw
    qemu-img snapshot -c mysnap c/l1.qcow2
    run --separate-stderr "$PROG" snapshot -l c/top.qcow2
    [ "$status" -eq 0 ] || fail "snapshot -l exited $status: $stderr"
    local want=(c/top.qcow2 c/l2.qcow2 c/l1.qcow2 c/b/base.raw) i=0 l
    for l in "${lines[@]}"; do
        if [ $i -lt 4 ] && [[ $l == *"${want[$i]}"* ]]; then
            i=$((i + 1))
        fi
    done
    [ $i -eq 4 ] || fail "chain not listed in order: $output"
    [[ $output == *mysnap* ]] || fail "internal snapshot not listed: $output"
}

@test "snapshot with an odd number of arguments is a usage error (64), nothing made" {
    use_chain raw
    run --separate-stderr "$PROG" snapshot c/top.qcow2 s/a.qcow2 c/l2.qcow2
    [ "$status" -eq 64 ] || fail "exited $status"
    [ -z "$(ls s)" ]
}
